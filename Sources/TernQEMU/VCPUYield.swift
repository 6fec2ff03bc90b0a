import CTernHost
import Foundation
import NIOConcurrencyHelpers

/// A migrating guest's vCPU threads yielding processor time to its migration.
///
/// While an outgoing live migration sends memory with the guest running, the guest's vCPUs and
/// the migration compete for the host's processors; on a host short of them (under TCG a busy
/// vCPU takes a whole one), the guest slows the migration down and dirties more memory that
/// must be sent again while it is stopped. So for that pass the vCPU threads run under Linux's
/// SCHED_IDLE: on processor time no other thread wants. On a host with processors to spare
/// nothing changes for the guest. Measured (`tern migrate`, a 1 GiB guest dirtying memory, two
/// processors, TCG, 12 moves each with and without): downtime median about 10 ms instead of 17,
/// the whole move about 345 ms instead of 490; the guest ran at about 40% of its pace meanwhile.
///
/// Each thread gets its own policy back when the migration ends, whatever its outcome, and
/// after ``limit`` at the latest, so that a long first pass on a busy host does not starve the
/// guest. Only where this process may give the policy back (``isPossible``): leaving SCHED_IDLE
/// takes CAP_SYS_NICE or a high enough RLIMIT_NICE.
final class VCPUYield: Sendable {
    /// The longest the vCPUs yield by default.
    static let longest: Duration = .seconds(3)
    /// The longest these vCPUs yield.
    let limit: Duration

    init(limit: Duration = VCPUYield.longest) { self.limit = limit }

    /// Whether this process could give the vCPU threads their policy back.
    static let isPossible = tern_may_leave_idle_policy() != 0

    private struct Saved {
        let thread: Int32
        let policy: Int32
        let priority: Int32
    }
    private let saved = NIOLockedValueBox<[Saved]>([])

    /// Moves `threads` to SCHED_IDLE, keeping the policy each had; threads already yielding, or
    /// whose policy cannot be read or changed (a thread that ended), are left as they are.
    /// Ends by itself after ``limit``.
    func begin(threads: [Int32]) {
        guard Self.isPossible else { return }
        let idle = tern_idle_policy()
        let moved = saved.withLockedValue { saved -> Bool in
            for thread in threads where !saved.contains(where: { $0.thread == thread }) {
                var policy: Int32 = 0
                var priority: Int32 = 0
                guard tern_thread_policy(thread, &policy, &priority) == 0, policy != idle,
                    tern_set_thread_policy(thread, idle, 0) == 0
                else { continue }
                saved.append(Saved(thread: thread, policy: policy, priority: priority))
            }
            return !saved.isEmpty
        }
        guard moved else { return }
        let limit = self.limit
        Task { [weak self] in
            try? await Task.sleep(for: limit)
            self?.end()
        }
    }

    /// Gives every yielding thread its policy back (nothing if none yields).
    func end() {
        let threads = saved.withLockedValue { saved in
            defer { saved = [] }
            return saved
        }
        for thread in threads { _ = tern_set_thread_policy(thread.thread, thread.policy, thread.priority) }
    }

    /// Takes `threads` out of SCHED_IDLE (to the usual policy): for a VM found running whose
    /// daemon ended while its vCPUs yielded.
    static func restoreIfIdle(threads: [Int32]) {
        guard isPossible else { return }
        let idle = tern_idle_policy()
        for thread in threads {
            var policy: Int32 = 0
            var priority: Int32 = 0
            guard tern_thread_policy(thread, &policy, &priority) == 0, policy == idle else { continue }
            _ = tern_set_thread_policy(thread, Int32(SCHED_OTHER), 0)
        }
    }
}
