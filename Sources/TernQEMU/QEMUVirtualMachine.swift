import CTernHost
import Foundation
import NIOConcurrencyHelpers
import NIOPosix
import TernCPU
import TernHypervisor

#if canImport(Glibc)
import Glibc
#endif

/// One VM run by QEMU, driven over QMP.
public final class QEMUVirtualMachine: VirtualMachineInstance {
    public let name: String
    public let pid: Int32
    public let files: VMFiles
    let client: QMPClient
    let map: CPUMap
    /// The QEMU process when it holds this process's terminal (`tern run`).
    let child: Process?
    /// The QEMU process when this process started it for a daemon; nil for both when this
    /// process found it running (a daemon started again).
    let process: QEMUProcess?
    /// The last event that says why the VM stops: SHUTDOWN's reason, or GUEST_PANICKED.
    private let ending = NIOLockedValueBox<String?>(nil)
    private let timings = NIOLockedValueBox(QEMUStartTimings())
    /// How long starting this VM took, phase by phase.
    public var startTimings: QEMUStartTimings {
        get { timings.withLockedValue { $0 } }
        set { timings.withLockedValue { $0 = newValue } }
    }
    private let eventTask: Task<Void, Never>
    /// When QEMU last stopped and last resumed the vCPUs (its STOP and RESUME events).
    private let transitions = NIOLockedValueBox<(stopped: Double?, resumed: Double?)>((nil, nil))
    public var lastStopped: Double? { transitions.withLockedValue { $0.stopped } }
    public var lastResumed: Double? { transitions.withLockedValue { $0.resumed } }
    /// Woken by QEMU's MIGRATION and STOP events.
    private let migrationSignal = Signal()
    /// The current outgoing migration as QEMU's events tell it: the passes over memory it has
    /// announced (MIGRATION_PASS); how many there were when it stopped the guest for the last one
    /// (a STOP after the first pass; QEMU before 10.0 reports no status of its own for that
    /// phase); and, when it was given up before its last pass for needing too many, the passes
    /// it would have made.
    private let outgoing = NIOLockedValueBox(OutgoingMigration())
    /// An incoming migration: whether this VM listens for one, and the status QEMU's last
    /// MIGRATION event gave it.
    private let receiving = NIOLockedValueBox<(listening: Bool, status: String?)>((false, nil))
    /// The settings ``prepareMigration(_:)`` applied for the next outgoing migration.
    private let outgoingSettings = NIOLockedValueBox<MigrationParameters?>(nil)
    /// The vCPU threads while they yield to an outgoing migration.
    private let vcpuYield: VCPUYield
    /// The vCPU threads' ids (QEMU's `query-cpus-fast`), asked once.
    private let vcpuThreadIDs = NIOLockedValueBox<[Int32]?>(nil)
    struct OutgoingMigration {
        var passes = 0
        var passesAtStop: Int?
        var abandonedAtPasses: Int?
        /// QEMU holds the guest before its last pass (pause-before-switchover) in this migration.
        var holdsBeforeLastPass = false
        /// The last pass was let go (`migrate-continue` accepted).
        var lastPassAllowed = false
        /// The STOP for the last pass has been reported (as completing) without asking QEMU.
        var stopReported = false
        /// What QEMU last answered about this migration.
        var lastProgress = MigrationProgress(status: .active)
        /// The guest was paused while QEMU set up tracking; whether `cont` was sent since, and
        /// how that went.
        var pausedForSetup = false
        var setupResumeSent = false
        /// The `cont` armed before the pause (not a fallback) claimed the resume.
        var setupResumedByArmedCommand = false
        var setupOutcome: SetupOutcome?
        enum SetupOutcome {
            case resumed, lastPassBegan
            case failed(QMPError)
        }
    }
    /// The passes over memory (the first and the last included) up to which QEMU's dirty-page
    /// tracking is exact for this VM (nil: no limit; see
    /// ``QEMUHypervisor/exactLiveMigrationPasses``). With a limit, a running guest is paused
    /// while an outgoing live migration starts tracking, and the migration makes two passes (or,
    /// with a downtime limit asked for, QEMU holds the guest stopped before its last pass until
    /// this VM has counted the passes: it lets the last pass go only if it is within the limit,
    /// and otherwise gives the migration up, reported as `.abandoned`). See ``migrate(to:parameters:)``.
    let exactPasses: Int?
    var pausesForTrackingSetup: Bool { exactPasses != nil }

    init(
        name: String, pid: Int32, client: QMPClient, files: VMFiles, map: CPUMap, child: Process?,
        process: QEMUProcess? = nil, exactPasses: Int?, yieldLimit: Duration = VCPUYield.longest
    ) {
        self.exactPasses = exactPasses
        vcpuYield = VCPUYield(limit: yieldLimit)
        self.name = name
        self.pid = pid
        self.client = client
        self.files = files
        self.map = map
        self.child = child
        self.process = process
        let ending = self.ending
        let transitions = self.transitions
        let migrationSignal = self.migrationSignal
        let outgoing = self.outgoing
        let receiving = self.receiving
        let vcpuYield = self.vcpuYield
        eventTask = Task {
            for await event in client.events {
                switch event.name {
                case "MIGRATION":
                    let status = event.data?["status"]?.string
                    receiving.withLockedValue { if $0.listening { $0.status = status } }
                    switch status {
                    case "active": await Self.resumeAfterSetup(client: client, outgoing: outgoing)
                    case "pre-switchover": await Self.decideLastPass(client: client, outgoing: outgoing, exactPasses: exactPasses)
                    case "completed", "failed", "cancelled": vcpuYield.end()
                    default: break
                    }
                    migrationSignal.fire()
                case "MIGRATION_PASS":
                    let pass = event.data?["pass"]?.int ?? 0
                    outgoing.withLockedValue { $0.passes = max($0.passes, pass) }
                case "STOP":
                    transitions.withLockedValue { $0.stopped = event.timestamp }
                    let state = outgoing.withLockedValue { state in
                        if state.passes > 0 && state.passesAtStop == nil { state.passesAtStop = state.passes }
                        return state
                    }
                    migrationSignal.fire()
                    // The STOP for the last pass comes a moment before QEMU holds the guest there
                    // (and announces it): a last pass within the limit is let go at once.
                    if state.holdsBeforeLastPass, let atStop = state.passesAtStop, Self.lastPassIsExact(after: atStop, exactPasses: exactPasses) {
                        await Self.allowLastPass(client: client, outgoing: outgoing)
                    }
                case "RESUME": transitions.withLockedValue { $0.resumed = event.timestamp }
                case "GUEST_PANICKED": ending.withLockedValue { $0 = "panicked" }
                case "SHUTDOWN":
                    let reason = event.data?["reason"]?.string ?? "unknown"
                    ending.withLockedValue { if $0 != "panicked" { $0 = reason } }
                default: continue
                }
            }
        }
    }

    deinit { eventTask.cancel() }

    public func runState() async throws -> VMRunState {
        let status = try await client.execute("query-status")
        switch status["status"]?.string {
        case "running": return .running
        case "guest-panicked", "internal-error": return .crashed
        case "shutdown": return .shutoff
        default: return .paused
        }
    }

    public func pause() async throws { try await client.execute("stop") }

    public func resume() async throws {
        // QEMU announces a completed outgoing migration a moment before it leaves its
        // finish-migrate run state, and refuses `cont` until then: wait that moment out (counted
        // in tries, not wall time, so a busy host that delays this task does not cut it short).
        var triesLeft = 2000  // 5 ms apart: 10 s
        while true {
            triesLeft -= 1
            let refusal: QMPError
            do {
                try await client.execute("cont")
                return
            } catch {
                refusal = error
            }
            guard case .commandFailed(_, _, let message) = refusal, message.contains("not finalized"), triesLeft > 0
            else { throw refusal }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    public func shutdown() async throws { try await client.execute("system_powerdown") }

    public func destroy() async throws {
        ending.withLockedValue { if $0 == nil { $0 = "destroyed" } }
        _ = try? await client.execute("quit")
        // Up to half a second for QEMU to exit by itself, looked at every 2 ms (the end of a
        // migration waits for this), then killed.
        var tries = 0
        while Self.isAlive(pid), tries < 250 {
            try? await Task.sleep(for: .milliseconds(2))
            tries += 1
        }
        guard Self.isAlive(pid) else { return }
        kill(pid, SIGKILL)
        // Gone before this returns (up to 5 s): its files, the disk's lock among them, with it.
        tries = 0
        while Self.isAlive(pid), tries < 2500 {
            try? await Task.sleep(for: .milliseconds(2))
            tries += 1
        }
    }

    /// The ids of the vCPUs' threads on this host.
    func vcpuThreads() async throws -> [Int32] {
        if let known = vcpuThreadIDs.withLockedValue({ $0 }) { return known }
        let cpus = try await client.execute("query-cpus-fast")
        let threads = (cpus.array ?? []).compactMap { $0["thread-id"]?.int }.map { Int32($0) }
        vcpuThreadIDs.withLockedValue { $0 = threads }
        return threads
    }

    /// A VM found running (its daemon started again): vCPU threads left yielding by a
    /// migration the ended daemon was making get their usual policy back.
    func endAnyYield() async {
        guard VCPUYield.isPossible, let threads = try? await vcpuThreads() else { return }
        VCPUYield.restoreIfIdle(threads: threads)
    }

    public func guestFeatures() async throws -> [String] {
        map.registry.names(of: try await readGuestFeatures())
    }

    func readGuestFeatures() async throws -> FeatureSet {
        let cpus = try await client.execute("query-cpus-fast")
        guard let path = cpus.array?.first?["qom-path"]?.string else {
            throw HypervisorError.commandFailed(command: "query-cpus-fast", message: "no vCPU listed")
        }
        let words = try await client.execute("qom-get", ["path": .string(path), "property": "feature-words"])
        return QEMUGuestCPU.features(fromFeatureWords: words.array ?? [], map: map)
    }

    /// Reads back the running vCPU's CPUID feature words and compares them with `expected`,
    /// over the features QEMU controls.
    func verifyCPU(_ expected: GuestCPU, capabilities: QEMUCapabilities) async throws {
        let actual = try await readGuestFeatures()
        var wanted = expected.features
        for name in QEMUGuestCPU.alwaysOn { if let feature = map.registry.feature(named: name) { wanted.insert(feature) } }
        let checked = map.registry.features.filter {
            $0.isCPUID && QEMUGuestCPU.propertyName(of: $0, in: capabilities) != nil
        }
        let scope = FeatureSet(indices: checked.map(\.index))
        let missing = wanted.intersection(scope).subtracting(actual)
        let unexpected = actual.intersection(scope).subtracting(wanted)
        if !missing.isEmpty || !unexpected.isEmpty {
            throw HypervisorError.cpuMismatch(
                missingInGuest: map.registry.names(of: missing), unexpectedInGuest: map.registry.names(of: unexpected))
        }
    }

    // MARK: - Migration

    /// Under TCG the vCPU's TLB may let stores skip dirty tracking for pages that were dirty
    /// when their entries were made, and before a migration every page is. The first pass
    /// clears every dirty bit, so a guest running through it could write to pages already sent
    /// without a trace. QEMU flushes the vCPUs' TLBs when tracking starts; with the guest paused
    /// from before that flush until the first pass is over, every later first write to a page
    /// is recorded. The pause lasts as long as QEMU's setup (a few milliseconds).
    ///
    /// Which passes follow depends on the downtime limit. QEMU begins a new pass (clearing the
    /// dirty bits again) whenever what is left to send falls below the limit's worth of data, and
    /// switches over when what is dirty after that is below it too. A pass begun with the guest
    /// running is harmless only if nothing is sent between it and the stop for the last pass
    /// (see ``QEMUHypervisor/exactLiveMigrationPasses``). So with an exact-pass limit and no
    /// downtime limit asked for, the limit is 0: QEMU sends every page once with the guest
    /// running, then stops it and sends what it dirtied meanwhile — two passes, never more, and
    /// nothing to decide before the last. With a downtime limit or auto-converge asked for, QEMU
    /// converges as it sees fit, and holds the guest stopped before its last pass until this VM
    /// has counted the passes (``decideLastPass``).
    @discardableResult
    public func migrate(to address: MigrationAddress, parameters: MigrationParameters) async throws -> Duration {
        let holds = switchover(parameters).holdsBeforeLastPass
        if outgoingSettings.withLockedValue({ $0 }) != parameters { try await prepareMigration(parameters) }
        outgoingSettings.withLockedValue { $0 = nil }
        let running = try await runState() == .running
        let pauseForSetup = running && parameters.live && pausesForTrackingSetup
        let pausedHere = running && (!parameters.live || pauseForSetup)
        let uri = try await streamURI(to: address, parameters: parameters)
        if running && parameters.live && parameters.guestYields && VCPUYield.isPossible {
            vcpuYield.begin(threads: try await vcpuThreads())
        }
        outgoing.withLockedValue { $0 = OutgoingMigration(holdsBeforeLastPass: holds, pausedForSetup: pauseForSetup) }
        let paused = ContinuousClock.now
        let pausedAtWallClock = Date().timeIntervalSince1970
        // The guest goes on the moment QEMU announces its first pass: `cont` is armed to go out
        // from the connection's own thread on that event. The event task and the query below
        // are fallbacks; whichever claims the resume first sends it, once.
        var armed: Int?
        if pauseForSetup {
            let (signal, outgoing) = (migrationSignal, self.outgoing)
            let (token, reply) = client.arm(QMPClient.Command("cont")) { event in
                Self.endsSetupPause(event) && Self.claimSetupResume(outgoing, byArmedCommand: true)
            }
            armed = token
            reply.whenComplete { result in
                outgoing.withLockedValue { state in
                    guard state.setupResumedByArmedCommand else { return }
                    switch result {
                    case .success: state.setupOutcome = .resumed
                    case .failure(let error): state.setupOutcome = Self.setupOutcome(afterFailed: error)
                    }
                }
                signal.fire()
            }
        }
        defer { if let armed { client.disarm(armed) } }
        do {
            // The pause and the start go together (QEMU runs them in this order).
            let start = QMPClient.Command("migrate", ["uri": .string(uri)])
            try await client.execute(inOrder: pausedHere ? [QMPClient.Command("stop"), start] : [start])
        } catch {
            vcpuYield.end()
            if pausedHere { _ = try? await client.execute("cont") }
            throw error
        }
        guard pauseForSetup else { return .zero }
        // QEMU reports "setup" until its first pass has begun; its events for that pass (the
        // armed `cont`, ``endsSetupPause``) or for "active" (``resumeAfterSetup``) let the guest
        // go on at once. Asked only after 20 ms without that word, in case: a query takes QEMU's
        // big lock, which its setup needs.
        var lastAsked = ContinuousClock.now
        while true {
            if let outcome = outgoing.withLockedValue({ $0.setupOutcome }) {
                switch outcome {
                case .resumed: return await pauseByEvents(since: pausedAtWallClock) ?? ContinuousClock.now - paused
                // Not resumed (the last pass began during the pause): the pause is part of the
                // downtime that the guest's last STOP starts, so it is not returned separately.
                case .lastPassBegan: return .zero
                case .failed(let error): throw error
                }
            }
            await waitForMigrationChange(upTo: .milliseconds(20))
            // `cont` sent: its reply (or its timeout) is the outcome.
            if outgoing.withLockedValue({ $0.setupOutcome != nil || $0.setupResumeSent }) { continue }
            guard ContinuousClock.now - lastAsked >= .milliseconds(20) else { continue }
            lastAsked = ContinuousClock.now
            // QEMU's own word (``migrationProgress()`` would use up the report of the last pass
            // that it gives once, from the events, to whoever follows the migration).
            let status = Self.progress(from: try await client.execute("query-migrate")).status
            if status == .active || status == .completing {
                await Self.resumeAfterSetup(client: client, outgoing: outgoing)
            } else if status != .setup {
                return .zero  // it ended during the pause: the caller finds out why
            }
        }
    }

    /// Where QEMU sends the stream: a socket connected here and handed to QEMU beforehand
    /// (`getfd`), so that the `migrate` sent once the guest is paused is short (QEMU reads
    /// commands a byte at a time) and QEMU connects nothing while the guest waits; the address
    /// itself for several connections (QEMU opens them all by address) or when it cannot be
    /// reached from here (QEMU then says why).
    private func streamURI(to address: MigrationAddress, parameters: MigrationParameters) async throws -> String {
        guard (parameters.connections ?? 1) <= 1 else { return address.qemuURI }
        // A connection across the network may wait for its time limit: not on this task's thread.
        let socket = try await NIOThreadPool.singleton.runIfActive { () -> Int32 in
            switch address {
            case .unixSocket(let path): tern_unix_connect(path)
            case .tcp(let host, let port): tern_tcp_connect(host, Int32(port), 10_000)
            }
        }
        guard socket >= 0 else { return address.qemuURI }
        defer { close(socket) }
        // The destination has this connection now: should QEMU not take it, the destination's
        // stream has already ended, and the move fails here.
        try await client.execute("getfd", ["fdname": .string(Self.streamDescriptorName)], passing: socket)
        return "fd:\(Self.streamDescriptorName)"
    }

    /// The name the stream's socket has in QEMU (`getfd`).
    static let streamDescriptorName = "stream"

    /// How long the guest was paused, by QEMU's own clock: from its STOP event to its RESUME event,
    /// the first ones at or after `wallClock` (seconds since 1970). That is what the guest lived
    /// through, measured as its downtime is; this VM's own clock would add the reply to `cont`
    /// and its wait for the scheduler. Nil if the events are not in within a few milliseconds.
    private func pauseByEvents(since wallClock: Double) async -> Duration? {
        for _ in 0..<20 {
            let (stopped, resumed) = transitions.withLockedValue { $0 }
            if let stopped, let resumed, stopped >= wallClock, resumed >= stopped {
                return .microseconds(Int64(((resumed - stopped) * 1_000_000).rounded()))
            }
            try? await Task.sleep(for: .milliseconds(1))
        }
        return nil
    }

    /// After the setup pause: `cont`, once (from QEMU's "active" event or the fallback query),
    /// unless the armed `cont` went out first.
    private static func resumeAfterSetup(client: QMPClient, outgoing: NIOLockedValueBox<OutgoingMigration>) async {
        guard claimSetupResume(outgoing, byArmedCommand: false) else { return }
        let outcome: OutgoingMigration.SetupOutcome
        do {
            try await client.execute("cont")
            outcome = .resumed
        } catch {
            outcome = setupOutcome(afterFailed: error)
        }
        outgoing.withLockedValue { $0.setupOutcome = outcome }
    }

    /// The event after which the guest may run again: QEMU announces the first pass
    /// (MIGRATION_PASS 1) the moment tracking is on and that pass is over, a fraction of a
    /// millisecond before the rest of its setup ends with the status `active`.
    static func endsSetupPause(_ event: QMPClient.Event) -> Bool {
        switch event.name {
        case "MIGRATION_PASS": return (event.data?["pass"]?.int ?? 0) >= 1
        case "MIGRATION": return event.data?["status"]?.string == "active"
        default: return false
        }
    }

    /// True for the one caller that may send the `cont` ending the setup pause.
    private static func claimSetupResume(_ outgoing: NIOLockedValueBox<OutgoingMigration>, byArmedCommand: Bool) -> Bool {
        outgoing.withLockedValue { state in
            guard state.pausedForSetup, !state.setupResumeSent else { return false }
            state.setupResumeSent = true
            state.setupResumedByArmedCommand = byArmedCommand
            return true
        }
    }

    /// What a refused `cont` at the end of the setup pause means.
    private static func setupOutcome(afterFailed error: any Error) -> OutgoingMigration.SetupOutcome {
        // "Not finalized": already in its last pass, which stops the guest anyway.
        if case .commandFailed(_, _, let message)? = error as? QMPError, message.contains("not finalized") {
            return .lastPassBegan
        }
        return .failed(error as? QMPError ?? .disconnected)
    }

    public func prepareMigration(_ parameters: MigrationParameters) async throws {
        let policy = switchover(parameters)
        try await client.execute(
            inOrder: Self.migrationSettings(
                parameters, outgoing: true, holdBeforeLastPass: policy.holdsBeforeLastPass,
                downtimeLimitMs: policy.downtimeLimitMs))
        outgoingSettings.withLockedValue { $0 = parameters }
    }

    /// When an outgoing migration switches over (see ``migrate(to:parameters:)``): under an
    /// exact-pass limit, a live pre-copy with neither a downtime limit nor auto-converge asked
    /// for makes two passes (QEMU's limit 0); one with either converges QEMU's way, held before
    /// its last pass. Without the limit, QEMU's way with the limit asked for or its default.
    private func switchover(_ parameters: MigrationParameters) -> (downtimeLimitMs: Int, holdsBeforeLastPass: Bool) {
        let exactLimited = exactPasses != nil && parameters.live && !parameters.postcopy
        let convergesItsWay = parameters.maxDowntimeMs != nil || parameters.autoConverge
        if exactLimited && !convergesItsWay { return (0, false) }
        return (parameters.maxDowntimeMs ?? Self.defaultDowntimeLimitMs, exactLimited)
    }

    /// Once QEMU has stopped the guest for the last pass, that phase is reported as completing,
    /// with the last pass counted (events arrive in order, so a pass announced before the STOP
    /// ran with the guest running, and the last pass is the one after it).
    public func migrationProgress() async throws -> MigrationProgress {
        // The moment QEMU stops the guest for the last pass, its big lock is held until the guest
        // is held (or the state is sent): a query would wait for that. The first report of that
        // phase comes from the events alone, so that the destination hears of it at once.
        let fromEvents = outgoing.withLockedValue { state -> MigrationProgress? in
            guard let atStop = state.passesAtStop, !state.stopReported else { return nil }
            state.stopReported = true
            var progress = state.lastProgress
            progress.status = .completing
            progress.rounds = max(progress.rounds, atStop + 1)
            return progress
        }
        if let fromEvents { return fromEvents }
        var progress = Self.progress(from: try await client.execute("query-migrate"))
        let events = outgoing.withLockedValue { state in
            state.lastProgress = progress
            return state
        }
        if progress.status == .active, let atStop = events.passesAtStop {
            progress.status = .completing
            progress.rounds = max(progress.rounds, atStop + 1)
        }
        if progress.status == .cancelled, let passes = events.abandonedAtPasses {
            progress.status = .abandoned
            progress.rounds = passes
        }
        return progress
    }

    /// A receiving QEMU loads the state on the thread that answers queries: while its events
    /// say the state is still arriving, a query would only wait for the load to end, taking
    /// processor time from it meanwhile (QEMU reads commands a byte at a time). Its MIGRATION
    /// event says when the state is in (or that it failed); a QEMU that ended says nothing, but
    /// its connection closes, and then the query says so. Its event for "completed" comes once
    /// the guest is resumed (or left paused) as asked, so it is taken at its word.
    public func receivingProgress() async throws -> MigrationProgress {
        let connected = client.isConnected
        let announced = receiving.withLockedValue { state -> MigrationProgress.Status? in
            guard state.listening, connected else { return nil }
            switch state.status {
            case "completed": return .completed
            case "active": return .active
            default: return nil
            }
        }
        if let announced { return MigrationProgress(status: announced) }
        return try await migrationProgress()
    }

    /// QEMU holds the guest stopped before its last pass (capability pause-before-switchover):
    /// lets it go on if that pass is within the exact limit, gives the migration up otherwise
    /// (QEMU then resumes the guest here, and the destination never gets the end of the stream).
    private static func decideLastPass(client: QMPClient, outgoing: NIOLockedValueBox<OutgoingMigration>, exactPasses: Int?) async {
        let (passes, allowed) = outgoing.withLockedValue { ($0.passes, $0.lastPassAllowed) }
        if allowed { return }
        if !lastPassIsExact(after: passes, exactPasses: exactPasses) {
            outgoing.withLockedValue { $0.abandonedAtPasses = passes + 1 }
            _ = try? await client.execute("migrate_cancel")
        } else {
            await allowLastPass(client: client, outgoing: outgoing)
        }
    }

    /// Whether a last pass after `passes` passes made with the guest running stays within the
    /// exact limit.
    private static func lastPassIsExact(after passes: Int, exactPasses: Int?) -> Bool {
        passes + 1 <= exactPasses ?? Int.max
    }

    /// `migrate-continue`; refused while QEMU is not (yet) holding the guest, which is then
    /// decided when it announces that it is.
    private static func allowLastPass(client: QMPClient, outgoing: NIOLockedValueBox<OutgoingMigration>) async {
        guard !outgoing.withLockedValue({ $0.lastPassAllowed }) else { return }
        if (try? await client.execute("migrate-continue", ["state": "pre-switchover"])) != nil {
            outgoing.withLockedValue { $0.lastPassAllowed = true }
        }
    }

    public func cancelMigration() async throws { try await client.execute("migrate_cancel") }

    public func switchToPostcopy() async throws { try await client.execute("migrate-start-postcopy") }

    public func recoverIncoming(at address: MigrationAddress) async throws -> MigrationAddress {
        try await listen(at: address, after: [QMPClient.Command("migrate-recover", ["uri": .string(address.qemuURI)])])
    }

    public func resumeMigration(to address: MigrationAddress) async throws {
        try await client.execute("migrate", ["uri": .string(address.qemuURI), "resume": true])
    }

    /// For a VM started with `-incoming defer`: sets the same capabilities as the sender and
    /// listens at `address`. Returns the address really listened on (TCP port 0 resolved).
    func receive(at address: MigrationAddress, parameters: MigrationParameters) async throws -> MigrationAddress {
        receiving.withLockedValue { $0 = (true, nil) }
        // Sent together: QEMU runs them in this order, so it listens with these capabilities.
        return try await listen(
            at: address,
            after: Self.migrationSettings(parameters, outgoing: false)
                + [QMPClient.Command("migrate-incoming", ["uri": .string(address.qemuURI)])])
    }

    /// Sends `commands` (the last of which makes QEMU listen at `address`) and returns the
    /// address QEMU really listens on.
    private func listen(at address: MigrationAddress, after commands: [QMPClient.Command]) async throws -> MigrationAddress {
        guard case .tcp(let host, 0) = address else {
            try await client.execute(inOrder: commands)
            return address
        }
        let info = try await client.execute(inOrder: commands + [QMPClient.Command("query-migrate")])[commands.count]
        for socket in info["socket-address"]?.array ?? [] {
            if let port = socket["port"]?.string.flatMap({ Int($0) }) ?? socket["port"]?.int {
                return .tcp(host: host, port: port)
            }
        }
        throw HypervisorError.commandFailed(command: "query-migrate", message: "QEMU did not say which port it listens on")
    }

    /// The commands that set a migration's capabilities and parameters. Capabilities must match
    /// on both sides; parameters that shape the sending only matter on the source.
    private static func migrationSettings(
        _ parameters: MigrationParameters, outgoing: Bool, holdBeforeLastPass: Bool = false,
        downtimeLimitMs: Int = defaultDowntimeLimitMs
    ) -> [QMPClient.Command] {
        var capabilities: [JSONValue] = [
            ["capability": "events", "state": true],  // MIGRATION events: no need to poll closely
            ["capability": "multifd", "state": .bool((parameters.connections ?? 1) > 1)],
            ["capability": "postcopy-ram", "state": .bool(parameters.postcopy)],
        ]
        if outgoing {
            capabilities.append(["capability": "auto-converge", "state": .bool(parameters.autoConverge)])
            // Set every time: capabilities outlast a migration, and the next one may differ.
            capabilities.append(["capability": "pause-before-switchover", "state": .bool(holdBeforeLastPass)])
        }
        var commands = [QMPClient.Command("migrate-set-capabilities", ["capabilities": .array(capabilities)])]
        var settings: [String: JSONValue] = [:]
        if let connections = parameters.connections, connections > 1 { settings["multifd-channels"] = .number(Double(connections)) }
        if outgoing {
            // No cap unless one is asked for (QEMU's own default is 32 MiB/s).
            let bandwidth = parameters.bandwidthMiBps.map { Double($0) * 1_048_576 } ?? Double(1 << 40)
            settings["max-bandwidth"] = .number(bandwidth)
            // The cap holds in post-copy too (QEMU's own default there: none).
            settings["max-postcopy-bandwidth"] = .number(parameters.bandwidthMiBps.map { Double($0) * 1_048_576 } ?? 0)
            // Set every time, like the capabilities.
            settings["downtime-limit"] = .number(Double(downtimeLimitMs))
        }
        if !settings.isEmpty { commands.append(QMPClient.Command("migrate-set-parameters", settings)) }
        return commands
    }

    /// QEMU's own default downtime limit, in milliseconds.
    static let defaultDowntimeLimitMs = 300

    public func waitForMigrationChange(upTo limit: Duration) async {
        await migrationSignal.wait(upTo: limit)
    }

    /// Reads QMP's `MigrationInfo`.
    static func progress(from info: JSONValue) -> MigrationProgress {
        let status: MigrationProgress.Status
        switch info["status"]?.string ?? "none" {
        case "setup": status = .setup
        case "active", "pre-switchover", "wait-unplug": status = .active
        case "postcopy-active", "postcopy-recover": status = .postcopy
        case "postcopy-paused": status = .postcopyPaused
        case "device", "cancelling": status = .completing
        case "completed": status = .completed
        case "failed": status = .failed
        case "cancelled": status = .cancelled
        default: status = .none
        }
        let ram = info["ram"]
        let pageSize = ram?["page-size"]?.int ?? 4096
        return MigrationProgress(
            status: status, error: info["error-desc"]?.string, elapsedMs: info["total-time"]?.int ?? 0,
            memoryBytes: ram?["total"]?.int ?? 0, remainingBytes: ram?["remaining"]?.int ?? 0,
            transferredBytes: ram?["transferred"]?.int ?? 0,
            rateBytesPerSecond: (ram?["mbps"].flatMap { if case .number(let v) = $0 { v } else { nil } } ?? 0) * 1_000_000 / 8,
            dirtyBytesPerSecond: Double((ram?["dirty-pages-rate"]?.int ?? 0) * pageSize),
            expectedDowntimeMs: info["expected-downtime"]?.int, rounds: ram?["dirty-sync-count"]?.int ?? 0,
            downtimeMs: info["downtime"]?.int)
    }

    public func waitForExit() async -> VMExit {
        if let child {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                DispatchQueue.global().async {
                    child.waitUntilExit()
                    continuation.resume()
                }
            }
        } else {
            while Self.isAlive(pid) { try? await Task.sleep(for: .milliseconds(10)) }
        }
        // Give the event stream a moment to deliver what QEMU said last.
        try? await Task.sleep(for: .milliseconds(20))
        switch ending.withLockedValue({ $0 }) {
        case "panicked": return .panicked
        case "guest-shutdown", "host-qmp-quit": return .poweredOff
        case "destroyed": return .killed(signal: SIGKILL)
        case let reason?: return .failed("QEMU stopped: \(reason)")
        case nil:
            if let child, child.terminationReason == .uncaughtSignal { return .killed(signal: child.terminationStatus) }
            if case .signaled(let number)? = process?.ended { return .killed(signal: number) }
            // Ended by itself without a word heard in time: a clean exit is a power-off.
            if case .exited(let status)? = process?.ended {
                return status == 0 ? .poweredOff : .failed("QEMU exited with status \(status)")
            }
            if Self.consoleShowsPanic(files.consoleLog) { return .panicked }
            return .killed(signal: SIGKILL)
        }
    }

    /// True while the process exists and has not ended. A zombie counts as ended: its parent
    /// (this process, or init for a QEMU whose daemon ended) may not have reaped it yet.
    static func isAlive(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return true }
        return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first != "Z"
    }

    /// True when the console log's last lines show a kernel panic.
    public static func consoleShowsPanic(_ log: URL) -> Bool {
        lastLines(of: log, count: 40).contains { $0.contains("Kernel panic - not syncing") }
    }

    /// The last `count` lines of a file (for crash reports).
    public static func lastLines(of file: URL, count: Int) -> [String] {
        guard let handle = try? FileHandle(forReadingFrom: file) else { return [] }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        let start = size > 16384 ? size - 16384 : 0
        try? handle.seek(toOffset: start)
        let data = (try? handle.readToEnd()) ?? Data()
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: CharacterSet(charactersIn: "\r")) }
        return Array(lines.suffix(count))
    }
}

extension MigrationAddress {
    /// The address in QEMU's migration URI syntax (`tcp:HOST:PORT`, `unix:PATH`).
    var qemuURI: String {
        switch self {
        case let .tcp(host, port): host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        case let .unixSocket(path): "unix:\(path)"
        }
    }
}
