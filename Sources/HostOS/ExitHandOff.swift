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
        // (Its own EINTR loop, not SystemCall's: after fork, no generic code and no runtime calls.)
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

/// Leaves a dead process's clean-up to a child, so that this process can exit now.
///
/// Forks a child that closes standard input, output and error, waits until `pidfd` is readable
/// (the process it names has exited; at most `waitSeconds`), removes `directories` in order
/// (rmdir: a cgroup directory is removed by the kernel once it has no task; EBUSY is retried for
/// up to `patienceMilliseconds` each), unlinks `files`, and exits. The child holds copies of
/// every descriptor of this process until then: an flock held through one stays held, so nobody
/// takes over what is being cleaned up. Nothing the child runs allocates or takes a lock (other
/// threads' locks may be held at the fork): the paths are made C strings here, before it.
///
/// Returns false if the child could not be made; the caller then cleans up itself.
public func cleanUpAfterExit(waitingFor pidfd: Int32, directories: [String], files: [String],
                             waitSeconds: Int32 = 30, patienceMilliseconds: Int = 2000) -> Bool {
    guard let dirs = try? CStringArray(directories), let names = try? CStringArray(files) else { return false }
    let pid = fork()
    if pid == 0 {
        close(0); close(1); close(2)
        var watched = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        // SAFETY: poll reads and writes the one pollfd on this stack frame.
        while poll(&watched, 1, waitSeconds * 1000) < 0 && errno == EINTR {}
        for i in 0..<dirs.count {
            var tries = 0
            // SAFETY: each entry is a NUL-terminated copy made before the fork, freed never (the
            // child exits, the parent frees its own copy).
            guard let path = dirs.pointers[i] else { continue }
            while rmdir(path) != 0 && errno == EBUSY && tries < patienceMilliseconds {
                var pause = timespec(tv_sec: 0, tv_nsec: 1_000_000)
                nanosleep(&pause, nil)
                tries += 1
            }
        }
        // SAFETY: as above.
        for i in 0..<names.count { if let path = names.pointers[i] { unlink(path) } }
        _exit(0)
    }
    withExtendedLifetime((dirs, names)) {}
    return pid > 0
}
