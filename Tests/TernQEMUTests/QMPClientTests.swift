import CTernHost
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TernCPU
import TernHypervisor
import Testing
@testable import TernQEMU

/// A scripted QMP server on a unix socket: greets, then answers each command by name. With
/// `running`, the guest runs (until a `stop`) and an outgoing migration is in setup for its
/// first query, then active (and, with `announcesActive`, says so at once with a MIGRATION event).
/// With `stampedPause`, `stop` and `cont` announce STOP and RESUME stamped that many seconds apart.
final class FakeQMPServer: Sendable {
    let path: String
    let channel: any Channel
    /// Every command received, in order.
    let commands = NIOLockedValueBox<[String]>([])
    /// The arguments of every command received, by command (the last one of each name).
    let arguments = NIOLockedValueBox<[String: JSONValue]>([:])

    init(
        running: Bool = false, passesBeforeStop: Int? = nil, holdsBeforeLastPass: Bool = false, announcesActive: Bool = false,
        announcesFirstPass: Bool = false, stampedPause: Double? = nil, offersOOB: Bool = false, vcpuThread: Int32? = nil
    ) async throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("qmp-\(UUID().uuidString.prefix(8)).sock").path
        let commands = self.commands
        let arguments = self.arguments
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        Handler(
                            running: running, passesBeforeStop: passesBeforeStop, holdsBeforeLastPass: holdsBeforeLastPass,
                            announcesActive: announcesActive, announcesFirstPass: announcesFirstPass, stampedPause: stampedPause,
                            offersOOB: offersOOB, vcpuThread: vcpuThread, commands: commands, arguments: arguments))
                }
            }
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
    }

    func close() async {
        try? await channel.close()
        try? FileManager.default.removeItem(atPath: path)
    }

    final class Handler: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        /// `cont` is refused this many times, as QEMU refuses it just after a migration completed.
        let refusedConts: NIOLockedValueBox<Int>
        let running: NIOLockedValueBox<Bool>
        let migrationQueries = NIOLockedValueBox(0)
        let commands: NIOLockedValueBox<[String]>
        let arguments: NIOLockedValueBox<[String: JSONValue]>
        /// `migrate` is followed by a MIGRATION event saying "active" (QEMU's first pass has begun).
        let announcesActive: Bool
        /// `migrate` is followed by QEMU's MIGRATION_PASS event for its first pass only (its
        /// setup goes on a moment longer before it says "active").
        let announcesFirstPass: Bool
        let stampedPause: Double?
        /// The greeting offers out-of-band mode, as QEMU's does on a socket.
        let offersOOB: Bool
        /// When `stop` came, in microseconds since 1970.
        let stoppedAt = NIOLockedValueBox(0)
        /// The thread id `query-cpus-fast` gives its one vCPU.
        let vcpuThread: Int32?

        /// When set, `query-migrate` is preceded by that many MIGRATION_PASS events and a STOP:
        /// QEMU stopping the guest for its last pass.
        let passesBeforeStop: Int?
        /// With `passesBeforeStop`: QEMU's pause-before-switchover. After the STOP, the migration
        /// waits in "pre-switchover" (announced by a MIGRATION event) until `migrate-continue`
        /// (then it completes) or `migrate_cancel` (then it is cancelled).
        let holdsBeforeLastPass: Bool
        let switchover = NIOLockedValueBox<String?>(nil)

        init(
            running: Bool, passesBeforeStop: Int?, holdsBeforeLastPass: Bool = false, announcesActive: Bool = false,
            announcesFirstPass: Bool = false, stampedPause: Double? = nil, offersOOB: Bool = false, vcpuThread: Int32? = nil,
            commands: NIOLockedValueBox<[String]>, arguments: NIOLockedValueBox<[String: JSONValue]>
        ) {
            self.offersOOB = offersOOB
            self.vcpuThread = vcpuThread
            self.announcesFirstPass = announcesFirstPass
            self.announcesActive = announcesActive
            self.stampedPause = stampedPause
            self.arguments = arguments
            self.passesBeforeStop = passesBeforeStop
            self.holdsBeforeLastPass = holdsBeforeLastPass
            self.running = NIOLockedValueBox(running)
            refusedConts = NIOLockedValueBox(running ? 0 : 3)
            self.commands = commands
        }

        func channelActive(context: ChannelHandlerContext) {
            let capabilities = offersOOB ? #"["oob"]"# : "[]"
            send(context, #"{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": \#(capabilities)}}"#)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let text = String(buffer: unwrapInboundIn(data))
            for line in text.split(separator: "\n") {
                guard let message = try? JSONDecoder().decode(JSONValue.self, from: Data(line.utf8)),
                    let command = message["execute"]?.string, let id = message["id"]?.int
                else { continue }
                commands.withLockedValue { $0.append(command) }
                arguments.withLockedValue { $0[command] = message["arguments"] ?? .null }
                switch command {
                case "query-status" where running.withLockedValue({ $0 }):
                    send(context, #"{"return": {"status": "running", "running": true}, "id": \#(id)}"#)
                case "query-status":
                    send(context, #"{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}"#)
                    send(context, #"{"return": {"status": "paused", "running": false}, "id": \#(id)}"#)
                case "stop":
                    running.withLockedValue { $0 = false }
                    if stampedPause != nil {
                        let now = Int((Date().timeIntervalSince1970 * 1_000_000).rounded())
                        stoppedAt.withLockedValue { $0 = now }
                        send(context, stamped("STOP", at: now))
                    }
                    send(context, #"{"return": {}, "id": \#(id)}"#)
                case "query-migrate" where passesBeforeStop != nil:
                    let passes = passesBeforeStop ?? 0
                    if holdsBeforeLastPass, let decided = switchover.withLockedValue({ $0 }) {
                        send(context, #"{"return": {"status": "\#(decided)", "ram": {"dirty-sync-count": \#(passes)}}, "id": \#(id)}"#)
                        continue
                    }
                    for pass in 1...max(1, passes) {
                        send(context, #"{"event": "MIGRATION_PASS", "data": {"pass": \#(pass)}, "timestamp": {"seconds": 1, "microseconds": 0}}"#)
                    }
                    send(context, #"{"event": "STOP", "timestamp": {"seconds": 2, "microseconds": 0}}"#)
                    if holdsBeforeLastPass {
                        switchover.withLockedValue { $0 = "pre-switchover" }
                        send(context, #"{"event": "MIGRATION", "data": {"status": "pre-switchover"}, "timestamp": {"seconds": 2, "microseconds": 1}}"#)
                    }
                    let status = holdsBeforeLastPass ? "pre-switchover" : "active"
                    send(context, #"{"return": {"status": "\#(status)", "ram": {"dirty-sync-count": \#(passes)}}, "id": \#(id)}"#)
                case "migrate-continue" where holdsBeforeLastPass:
                    switchover.withLockedValue { $0 = "completed" }
                    send(context, #"{"return": {}, "id": \#(id)}"#)
                case "migrate_cancel" where holdsBeforeLastPass:
                    switchover.withLockedValue { $0 = "cancelled" }
                    send(context, #"{"return": {}, "id": \#(id)}"#)
                case "query-migrate":
                    let queries = migrationQueries.withLockedValue { count in
                        count += 1
                        return count
                    }
                    send(context, #"{"return": {"status": "\#(queries == 1 ? "setup" : "active")"}, "id": \#(id)}"#)
                case "cont":
                    let refuse = refusedConts.withLockedValue { left in
                        defer { left -= 1 }
                        return left > 0
                    }
                    if refuse {
                        send(context, #"{"error": {"class": "GenericError", "desc": "Migration is not finalized yet"}, "id": \#(id)}"#)
                    } else {
                        running.withLockedValue { $0 = true }
                        if let stampedPause {
                            send(context, stamped("RESUME", at: stoppedAt.withLockedValue { $0 } + Int(stampedPause * 1_000_000)))
                        }
                        send(context, #"{"return": {}, "id": \#(id)}"#)
                    }
                case "migrate-incoming" where announcesActive:
                    send(context, #"{"return": {}, "id": \#(id)}"#)
                    send(context, #"{"event": "MIGRATION", "data": {"status": "active"}, "timestamp": {"seconds": 1, "microseconds": 0}}"#)
                case "arrive":  // the incoming state is in
                    send(context, #"{"event": "MIGRATION", "data": {"status": "completed"}, "timestamp": {"seconds": 1, "microseconds": 0}}"#)
                    send(context, #"{"return": {}, "id": \#(id)}"#)
                case "migrate" where announcesFirstPass:
                    send(context, #"{"return": {}, "id": \#(id)}"#)
                    send(context, #"{"event": "MIGRATION_PASS", "data": {"pass": 1}, "timestamp": {"seconds": 1, "microseconds": 0}}"#)
                case "migrate" where announcesActive:
                    send(context, #"{"return": {}, "id": \#(id)}"#)
                    send(context, #"{"event": "MIGRATION", "data": {"status": "active"}, "timestamp": {"seconds": 1, "microseconds": 0}}"#)
                case "query-cpus-fast" where vcpuThread != nil:
                    let cpu = #"{"cpu-index": 0, "thread-id": \#(vcpuThread ?? 0), "qom-path": "/machine/unattached/device[0]"}"#
                    send(context, #"{"return": [\#(cpu)], "id": \#(id)}"#)
                case "fail-migration":  // the migration fails (its destination went away, say)
                    send(context, #"{"event": "MIGRATION", "data": {"status": "failed"}, "timestamp": {"seconds": 3, "microseconds": 0}}"#)
                    send(context, #"{"return": {}, "id": \#(id)}"#)
                case "boom":
                    send(context, #"{"error": {"class": "GenericError", "desc": "it broke"}, "id": \#(id)}"#)
                case "echo":
                    let arguments = message["arguments"] ?? .null
                    send(context, #"{"return": \#(arguments), "id": \#(id)}"#)
                case "slow":
                    continue
                case "bye":
                    context.close(promise: nil)
                default:
                    send(context, #"{"return": {}, "id": \#(id)}"#)
                }
            }
        }

        /// A QMP event stamped `microseconds` after 1970, as QEMU stamps its events.
        private func stamped(_ event: String, at microseconds: Int) -> String {
            #"{"event": "\#(event)", "timestamp": {"seconds": \#(microseconds / 1_000_000), "microseconds": \#(microseconds % 1_000_000)}}"#
        }

        private func send(_ context: ChannelHandlerContext, _ line: String) {
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: line + "\n")), promise: nil)
        }
    }
}

@Suite struct QMPClientTests {
    @Test func negotiatesAndRunsCommands() async throws {
        let server = try await FakeQMPServer()
        let client = try await QMPClient.connect(path: server.path)
        let status = try await client.execute("query-status")
        #expect(status["status"]?.string == "paused")
        let echoed = try await client.execute("echo", ["path": "/machine", "n": 3])
        #expect(echoed == ["path": "/machine", "n": 3])
        await client.close()
        await server.close()
    }

    /// Commands sent together reach QEMU in order and their replies come back in that order; a
    /// failure among them is thrown, and the commands after it still ran.
    @Test func commandsSentTogetherRunAndAnswerInOrder() async throws {
        let server = try await FakeQMPServer()
        let client = try await QMPClient.connect(path: server.path)
        let replies = try await client.execute(inOrder: [
            .init("echo", ["n": 1]), .init("echo", ["n": 2]), .init("query-status"), .init("echo", ["n": 3]),
        ])
        #expect(replies.count == 4)
        #expect(replies[0] == ["n": 1] && replies[1] == ["n": 2] && replies[3] == ["n": 3])
        #expect(replies[2]["status"]?.string == "paused")
        #expect(server.commands.withLockedValue { $0 } == ["qmp_capabilities", "echo", "echo", "query-status", "echo"])

        await #expect {
            try await client.execute(inOrder: [.init("echo", ["n": 4]), .init("boom"), .init("echo", ["n": 5])])
        } throws: { error in
            guard case QMPError.commandFailed(let command, _, _) = error else { return false }
            return command == "boom"
        }
        // The command after the failed one was sent all the same; the connection goes on.
        #expect(try await client.execute("echo", ["n": 6]) == ["n": 6])
        #expect(server.commands.withLockedValue { Array($0.suffix(4)) } == ["echo", "boom", "echo", "echo"])
        await client.close()
        await server.close()
    }

    /// Out-of-band mode is asked for where QEMU's greeting offers it, and only there.
    @Test(arguments: [true, false])
    func outOfBandModeIsNegotiatedWhereOffered(offered: Bool) async throws {
        let server = try await FakeQMPServer(offersOOB: offered)
        let client = try await QMPClient.connect(path: server.path)
        let asked = server.arguments.withLockedValue { $0["qmp_capabilities"] }
        #expect(asked == (offered ? ["enable": ["oob"]] : .null))
        await client.close()
        await server.close()
    }

    /// An armed command goes out when an event its trigger accepts arrives (here the STOP that
    /// answers a query), once; one whose trigger accepts nothing can be withdrawn unsent.
    @Test func anArmedCommandGoesOutOnItsEventOnly() async throws {
        let server = try await FakeQMPServer()
        let client = try await QMPClient.connect(path: server.path)
        let onStop = client.arm(.init("echo", ["armed": true])) { $0.name == "STOP" }
        let onResume = client.arm(.init("echo", ["never": true])) { $0.name == "RESUME" }
        _ = try await client.execute("query-status")
        #expect(try await onStop.reply.get() == ["armed": true])
        _ = try await client.execute("query-status")  // a second STOP: nothing more goes out
        client.disarm(onResume.token)
        await #expect(throws: QMPError.self) { try await onResume.reply.get() }
        #expect(server.commands.withLockedValue { $0 } == ["qmp_capabilities", "query-status", "echo", "query-status"])
        await client.close()
        await server.close()
    }

    @Test func eventsArriveOnTheirStream() async throws {
        let server = try await FakeQMPServer()
        let client = try await QMPClient.connect(path: server.path)
        _ = try await client.execute("query-status")
        var iterator = client.events.makeAsyncIterator()
        let event = await iterator.next()
        #expect(event?.name == "STOP")
        await client.close()
        await server.close()
    }

    @Test func qemusErrorTextIsSurfacedWithTheCommand() async throws {
        let server = try await FakeQMPServer()
        let client = try await QMPClient.connect(path: server.path)
        await #expect {
            try await client.execute("boom")
        } throws: { error in
            guard case QMPError.commandFailed(let command, let errorClass, let message) = error else { return false }
            return command == "boom" && errorClass == "GenericError" && message == "it broke"
        }
        await client.close()
        await server.close()
    }

    @Test func aCommandWithoutAnswerTimesOut() async throws {
        let server = try await FakeQMPServer()
        let client = try await QMPClient.connect(path: server.path, timeout: 0.3)
        await #expect {
            try await client.execute("slow")
        } throws: { error in
            if case QMPError.timeout(let command) = error { return command == "slow" }
            return false
        }
        await client.close()
        await server.close()
    }

    @Test func aClosedConnectionFailsPendingAndLaterCommands() async throws {
        let server = try await FakeQMPServer()
        let client = try await QMPClient.connect(path: server.path)
        await #expect(throws: QMPError.self) { try await client.execute("bye") }
        await #expect(throws: QMPError.self) { try await client.execute("query-status") }
        await server.close()
    }

    /// QEMU sends MIGRATION completed a moment before it leaves finish-migrate; a `cont` in that
    /// moment is refused. Resuming a source after a failed confirmation must wait it out.
    @Test func resumeWaitsOutAMigrationThatIsNotFinalized() async throws {
        let server = try await FakeQMPServer()
        let client = try await QMPClient.connect(path: server.path)
        let vm = QEMUVirtualMachine(
            name: "fake", pid: 0, client: client, files: VMFiles(directory: URL(fileURLWithPath: "/nonexistent")),
            map: try CPUMap.builtin(), child: nil, exactPasses: nil)
        try await vm.resume()  // refused three times, then accepted
        await client.close()
        await server.close()
    }

    /// Under TCG a running guest is paused while QEMU starts tracking dirty pages (its first
    /// pass), and resumed as soon as that is done; elsewhere it is not paused at all, and a
    /// non-live migration pauses it and leaves it paused.
    @Test(arguments: [(true, true, ["stop", "migrate", "cont"]), (false, true, ["migrate"]), (false, false, ["stop", "migrate"])])
    func aMigrationPausesTheGuestOnlyWhenItMust(limitsPasses: Bool, live: Bool, expected: [String]) async throws {
        let server = try await FakeQMPServer(running: true)
        let client = try await QMPClient.connect(path: server.path)
        let vm = QEMUVirtualMachine(
            name: "fake", pid: 0, client: client, files: VMFiles(directory: URL(fileURLWithPath: "/nonexistent")),
            map: try CPUMap.builtin(), child: nil, exactPasses: limitsPasses ? 3 : nil)
        try await vm.migrate(to: .tcp(host: "127.0.0.1", port: 1), parameters: MigrationParameters(live: live))
        let sent = server.commands.withLockedValue { $0 }.filter { ["stop", "migrate", "cont"].contains($0) }
        #expect(sent == expected)
        await client.close()
        await server.close()
    }

    /// The stream's socket is connected before the guest is paused and handed to QEMU (`getfd`),
    /// so that the `migrate` sent once it is paused is short and QEMU connects nothing meanwhile;
    /// a destination that cannot be reached from here is left to QEMU, by its address.
    @Test func theStreamSocketIsHandedToQEMUBeforeThePause() async throws {
        let destination = FileManager.default.temporaryDirectory.appendingPathComponent("in-\(UUID().uuidString.prefix(8)).sock").path
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(unixDomainSocketPath: destination, cleanupExistingSocketFile: true).get()
        for (address, uri, first) in [
            (MigrationAddress.unixSocket(destination), "fd:stream", ["getfd", "stop", "migrate", "cont"]),
            (.tcp(host: "127.0.0.1", port: 1), "tcp:127.0.0.1:1", ["stop", "migrate", "cont"]),
        ] {
            let server = try await FakeQMPServer(running: true, announcesActive: true)
            let client = try await QMPClient.connect(path: server.path)
            let vm = QEMUVirtualMachine(
                name: "fake", pid: 0, client: client, files: VMFiles(directory: URL(fileURLWithPath: "/nonexistent")),
                map: try CPUMap.builtin(), child: nil, exactPasses: 3)
            try await vm.migrate(to: address, parameters: MigrationParameters())
            let sent = server.commands.withLockedValue { $0 }.filter { ["getfd", "stop", "migrate", "cont"].contains($0) }
            #expect(sent == first, "\(sent)")
            let arguments = server.arguments.withLockedValue { $0 }
            #expect(arguments["migrate"]?["uri"]?.string == uri)
            if uri.hasPrefix("fd:") { #expect(arguments["getfd"]?["fdname"]?.string == "stream") }
            await client.close()
            await server.close()
        }
        try await listener.close()
        try? FileManager.default.removeItem(atPath: destination)
    }

    /// QEMU's MIGRATION_PASS event for its first pass (or, should that be missed, its MIGRATION
    /// event for "active") lets the guest paused for tracking setup go on at once, without a
    /// query in between (every query waits for QEMU's big lock).
    @Test(arguments: [false, true])
    func theGuestGoesOnAsSoonAsQEMUAnnouncesTheFirstPass(passEventOnly: Bool) async throws {
        let server = try await FakeQMPServer(running: true, announcesActive: !passEventOnly, announcesFirstPass: passEventOnly)
        let client = try await QMPClient.connect(path: server.path)
        let vm = QEMUVirtualMachine(
            name: "fake", pid: 0, client: client, files: VMFiles(directory: URL(fileURLWithPath: "/nonexistent")),
            map: try CPUMap.builtin(), child: nil, exactPasses: 3)
        let pause = try await vm.migrate(to: .tcp(host: "127.0.0.1", port: 1), parameters: MigrationParameters())
        let sent = server.commands.withLockedValue { $0 }
        let afterMigrate = sent.drop { $0 != "migrate" }
        #expect(Array(afterMigrate) == ["migrate", "cont"], "\(sent)")
        #expect(pause > .zero)
        await client.close()
        await server.close()
    }

    /// A process standing in for a vCPU thread (to the scheduler a process id names a thread):
    /// it waits an hour, with no hold on the test's output. End it with SIGKILL: the test
    /// process's threads may block SIGTERM, and its children inherit that.
    static func standInThread() throws -> Int32 {
        let stand = Process()
        stand.executableURL = URL(fileURLWithPath: "/bin/sleep")
        stand.arguments = ["3600"]
        stand.standardOutput = FileHandle.nullDevice
        stand.standardError = FileHandle.nullDevice
        try stand.run()
        return stand.processIdentifier
    }

    /// While memory is sent with the guest running, its vCPU threads run under SCHED_IDLE (they
    /// yield to the migration), and get their own policy back when the migration ends, here by
    /// failing. Asked not to (`--no-yield`), they keep it throughout.
    @Test(arguments: [true, false]) func theVCPUsYieldToTheMigrationUntilItEnds(yields: Bool) async throws {
        let thread = try Self.standInThread()
        defer { kill(thread, SIGKILL) }
        func policy() -> Int32 {
            var policy: Int32 = -1
            var priority: Int32 = 0
            _ = tern_thread_policy(thread, &policy, &priority)
            return policy
        }
        let usual = policy()
        #expect(usual != tern_idle_policy())
        let server = try await FakeQMPServer(running: true, announcesActive: true, vcpuThread: thread)
        let client = try await QMPClient.connect(path: server.path)
        let vm = QEMUVirtualMachine(
            name: "fake", pid: 0, client: client, files: VMFiles(directory: URL(fileURLWithPath: "/nonexistent")),
            map: try CPUMap.builtin(), child: nil, exactPasses: 3, yieldLimit: .seconds(600))
        try await vm.migrate(to: .tcp(host: "127.0.0.1", port: 1), parameters: MigrationParameters(guestYields: yields))
        // Where this process could not give the policy back, the vCPUs never yield.
        #expect(policy() == (yields && VCPUYield.isPossible ? tern_idle_policy() : usual))
        try await client.execute("fail-migration")
        await vm.waitForMigrationChange(upTo: .seconds(5))
        // (Up to a minute: in a full test run, the tests that wait on processes can hold up this one's
        // tasks for tens of seconds.)
        let deadline = ContinuousClock.now + .seconds(60)
        while policy() != usual, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(policy() == usual)
        await client.close()
        await server.close()
    }

    /// A daemon that ended while a VM's vCPUs yielded finds them so when it starts again, and
    /// gives them the usual policy back; threads under another policy are left alone.
    @Test func vcpusLeftYieldingGetTheUsualPolicyBack() throws {
        guard VCPUYield.isPossible else { return }  // nothing yields then (see the test above)
        let (yielding, batch) = (try Self.standInThread(), try Self.standInThread())
        defer { for thread in [yielding, batch] { kill(thread, SIGKILL) } }
        #expect(tern_set_thread_policy(yielding, tern_idle_policy(), 0) == 0)
        #expect(tern_set_thread_policy(batch, 3 /* SCHED_BATCH */, 0) == 0)
        VCPUYield.restoreIfIdle(threads: [yielding, batch])
        var policy: Int32 = -1
        var priority: Int32 = 0
        #expect(tern_thread_policy(yielding, &policy, &priority) == 0 && policy == Int32(SCHED_OTHER))
        #expect(tern_thread_policy(batch, &policy, &priority) == 0 && policy == 3 /* SCHED_BATCH */)
    }

    /// A receiving QEMU loads the state on the thread that answers queries: while it waits for
    /// the end, a receiving VM's progress is told from QEMU's events, without a query (which
    /// would only wait for the load); decisions still ask.
    @Test func aReceivingVMIsNotQueriedWhileTheStateLoads() async throws {
        let server = try await FakeQMPServer(announcesActive: true)
        let client = try await QMPClient.connect(path: server.path)
        let vm = QEMUVirtualMachine(
            name: "fake", pid: 0, client: client, files: VMFiles(directory: URL(fileURLWithPath: "/nonexistent")),
            map: try CPUMap.builtin(), child: nil, exactPasses: nil)
        _ = try await vm.receive(at: .unixSocket("/nonexistent/in.sock"), parameters: MigrationParameters())
        await vm.waitForMigrationChange(upTo: .seconds(5))  // QEMU's MIGRATION event: "active"
        #expect(try await vm.receivingProgress().status == .active)
        #expect(!server.commands.withLockedValue { $0 }.contains("query-migrate"))
        try await client.execute("arrive")
        await vm.waitForMigrationChange(upTo: .seconds(5))  // "completed"
        #expect(try await vm.receivingProgress().status == .completed)
        #expect(!server.commands.withLockedValue { $0 }.contains("query-migrate"))
        _ = try await vm.migrationProgress()
        #expect(server.commands.withLockedValue { $0 }.contains("query-migrate"))
        // A QEMU that ended says nothing more: with its connection gone, the answer is the query's.
        await client.close()
        await #expect(throws: QMPError.self) { try await vm.receivingProgress() }
        await server.close()
    }

    /// The pause while tracking starts is measured as the downtime is: from QEMU's STOP event to
    /// its RESUME event, by QEMU's clock (here they say 250 ms; the exchange itself takes less).
    @Test func theSetupPauseIsTheOneQEMUsEventsTell() async throws {
        let server = try await FakeQMPServer(running: true, announcesActive: true, stampedPause: 0.25)
        let client = try await QMPClient.connect(path: server.path)
        let vm = QEMUVirtualMachine(
            name: "fake", pid: 0, client: client, files: VMFiles(directory: URL(fileURLWithPath: "/nonexistent")),
            map: try CPUMap.builtin(), child: nil, exactPasses: 3)
        let pause = try await vm.migrate(to: .tcp(host: "127.0.0.1", port: 1), parameters: MigrationParameters())
        #expect(pause == .milliseconds(250))
        await client.close()
        await server.close()
    }

    /// Where tracking is exact only up to some passes, a live migration with no downtime limit
    /// asked for gets QEMU's limit 0: one pass with the guest running, then the stop and the
    /// last pass, with nothing to decide in between. A downtime limit or auto-converge asked for
    /// lets QEMU converge its own way, held before its last pass; elsewhere QEMU's defaults hold.
    @Test(arguments: [
        (3, nil, false, 0, false), (3, 100, false, 100, true), (3, nil, true, 300, true), (nil, nil, false, 300, false),
        (nil, 50, false, 50, false),
    ] as [(Int?, Int?, Bool, Int, Bool)])
    func aLiveMigrationUnderAnExactLimitMakesOneRunningPass(
        exactPasses: Int?, maxDowntimeMs: Int?, autoConverge: Bool, downtimeLimit: Int, holds: Bool
    ) async throws {
        let server = try await FakeQMPServer(running: true, announcesActive: true)
        let client = try await QMPClient.connect(path: server.path)
        let vm = QEMUVirtualMachine(
            name: "fake", pid: 0, client: client, files: VMFiles(directory: URL(fileURLWithPath: "/nonexistent")),
            map: try CPUMap.builtin(), child: nil, exactPasses: exactPasses)
        try await vm.migrate(
            to: .tcp(host: "127.0.0.1", port: 1), parameters: MigrationParameters(maxDowntimeMs: maxDowntimeMs, autoConverge: autoConverge))
        let parameters = server.arguments.withLockedValue { $0["migrate-set-parameters"] }
        #expect(parameters?["downtime-limit"]?.int == downtimeLimit)
        let capabilities = server.arguments.withLockedValue { $0["migrate-set-capabilities"] }?["capabilities"]?.array ?? []
        let hold = capabilities.first { $0["capability"]?.string == "pause-before-switchover" }
        #expect(hold?["state"] == .bool(holds))
        await client.close()
        await server.close()
    }

    /// QEMU 7.2 reports "active" through the last pass; the STOP that follows the announced
    /// passes (events arrive in order) is what says the last pass has begun.
    @Test(arguments: [2, 3])
    func theStopForTheLastPassIsReportedAsCompleting(passesBeforeStop: Int) async throws {
        let server = try await FakeQMPServer(running: true, passesBeforeStop: passesBeforeStop)
        let client = try await QMPClient.connect(path: server.path)
        let vm = QEMUVirtualMachine(
            name: "fake", pid: 0, client: client, files: VMFiles(directory: URL(fileURLWithPath: "/nonexistent")),
            map: try CPUMap.builtin(), child: nil, exactPasses: nil)
        try await vm.migrate(to: .tcp(host: "127.0.0.1", port: 1), parameters: MigrationParameters())
        var progress = try await vm.migrationProgress()
        for _ in 0..<100 where progress.status != .completing {
            try await Task.sleep(for: .milliseconds(10))
            progress = try await vm.migrationProgress()
        }
        #expect(progress.status == .completing)
        #expect(progress.rounds == passesBeforeStop + 1)
        await client.close()
        await server.close()
    }

    /// Where tracking is exact only up to 3 passes and a downtime limit is asked for, QEMU holds
    /// the guest stopped before its last pass; the VM lets that pass go when it is the 3rd at most, and gives the migration up
    /// (reported as abandoned, with the passes it would have made) when it would be the 4th.
    @Test(arguments: [(2, "migrate-continue", MigrationProgress.Status.completed), (3, "migrate_cancel", .abandoned)])
    func theLastPassGoesOnlyWithinTheExactLimit(passesBeforeStop: Int, decision: String, outcome: MigrationProgress.Status) async throws {
        let server = try await FakeQMPServer(running: true, passesBeforeStop: passesBeforeStop, holdsBeforeLastPass: true)
        let client = try await QMPClient.connect(path: server.path)
        let vm = QEMUVirtualMachine(
            name: "fake", pid: 0, client: client, files: VMFiles(directory: URL(fileURLWithPath: "/nonexistent")),
            map: try CPUMap.builtin(), child: nil, exactPasses: 3)
        // A downtime limit asked for: QEMU converges its own way, so it may need more passes.
        try await vm.migrate(to: .tcp(host: "127.0.0.1", port: 1), parameters: MigrationParameters(maxDowntimeMs: 100))
        var progress = try await vm.migrationProgress()
        for _ in 0..<200 where !progress.isFinished {
            try await Task.sleep(for: .milliseconds(10))
            progress = try await vm.migrationProgress()
        }
        #expect(progress.status == outcome)
        if outcome == .abandoned { #expect(progress.rounds == passesBeforeStop + 1) }
        let decisions = server.commands.withLockedValue { $0 }.filter { ["migrate-continue", "migrate_cancel"].contains($0) }
        #expect(decisions == [decision])
        await client.close()
        await server.close()
    }

    @Test func noServerIsAConnectionError() async throws {
        await #expect {
            try await QMPClient.connect(path: "/nonexistent/qmp.sock")
        } throws: { error in
            if case QMPError.connectionFailed(let path, _) = error { return path == "/nonexistent/qmp.sock" }
            return false
        }
    }
}
