#if canImport(Glibc)
import Glibc
#endif

/// A mutex with a condition variable (pthread), for a thread that sleeps until others hand it
/// work or until a deadline, and for callers that sleep until that work is done: the audit log's
/// group commit. Swift's `Mutex` has no condition; this is the host-OS layer's one.
public final class ConditionLock: @unchecked Sendable {
    // Sendable: the pthread objects are made for sharing between threads; they live on the heap
    // at fixed addresses from init to deinit.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        // SAFETY: one pthread_mutex_t and one pthread_cond_t, allocated here, initialised before
        // any use, destroyed and freed in deinit (when no thread can hold or wait on them).
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        // Deadlines are on the monotonic clock (a changed wall clock must not wake or hold a waiter).
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        // SAFETY: nobody holds or waits on them any more (this is the last reference).
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` holding the lock.
    public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        // SAFETY: the mutex was initialised in init.
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Inside `withLock` only: releases the lock, sleeps until `broadcast` (or a spurious wake-up:
    /// callers loop on their own condition), and takes the lock again.
    public func wait() {
        // SAFETY: called with the mutex held, as pthread_cond_wait requires.
        pthread_cond_wait(condition, mutex)
    }

    /// Inside `withLock` only: as `wait`, but never past `deadline` (monotonic nanoseconds, as
    /// `monotonicNanoseconds()`). False when the deadline passed.
    @discardableResult
    public func wait(untilMonotonic deadline: UInt64) -> Bool {
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        // SAFETY: called with the mutex held; `ts` is a timespec on the stack.
        return pthread_cond_timedwait(condition, mutex, &ts) != ETIMEDOUT
    }

    /// Wakes every waiter (call with or without the lock held).
    public func broadcast() {
        // SAFETY: the condition was initialised in init.
        pthread_cond_broadcast(condition)
    }
}
