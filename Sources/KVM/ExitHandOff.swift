#if canImport(Glibc)
import Glibc
#endif

/// Lets this process exit without waiting for the kernel to release its descriptors.
///
/// When a process exits, the kernel closes its descriptors before its parent learns of the
/// exit; the last close of a VM with the in-kernel interrupt controller takes 12-20 ms on these
/// hosts, so a command-line VMM's exit status would reach its caller that much after the guest's
/// outcome (issue 9). This forks a child that holds copies of every descriptor until this process
/// has exited (a pipe's end-of-file tells it), then exits itself: the last references, and the
/// slow release, are the child's, and nobody waits for it. The child closes standard input,
/// output and error first, so a caller reading this process's output sees its end at once.
///
/// Call it once the VM has ended and its outcome has been reported, with no other thread
/// running (the child only makes system calls that are safe after fork). Guest memory is
/// MADV_DONTFORK, so the child does not copy it. Returns false if the child could not be made
/// (then the process simply exits the slow way).
@discardableResult
public func releaseDescriptorsAfterExit() -> Bool {
    var ends: [Int32] = [-1, -1]
    let made = ends.withUnsafeMutableBufferPointer { buf -> Int32 in
        // SAFETY: pipe writes exactly two descriptors into the array's storage.
        pipe(buf.baseAddress)
    }
    guard made == 0 else { return false }
    let (readEnd, writeEnd) = (ends[0], ends[1])
    // Close-on-exec (no other thread runs, so nothing can exec in between).
    _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
    _ = fcntl(writeEnd, F_SETFD, FD_CLOEXEC)
    let pid = fork()
    if pid == 0 {
        // The child: nothing here allocates or takes a lock (other threads' locks may be held).
        close(writeEnd)
        close(0); close(1); close(2)
        var byte: UInt8 = 0
        // End of file once every copy of the write end is closed: when the parent has exited.
        while read(readEnd, &byte, 1) < 0 && errno == EINTR {}
        _exit(0)
    }
    close(readEnd)
    guard pid > 0 else {
        close(writeEnd)
        return false
    }
    // The write end stays open until this process exits; it is close-on-exec, so nothing this
    // process might still start inherits it.
    return true
}
