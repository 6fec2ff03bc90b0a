import CTernHost
import Foundation
import TernAPI
import TernHypervisor
import TernTestSupport
import Testing

/// Drives `ternd` through `tern` as a user would, with real guests.
@Suite(.serialized) struct DaemonTests {
    init() throws { try TestGuest.ensureBuilt() }

    func define(_ daemon: TestDaemon, _ xml: String) throws -> ProgramRun {
        try daemon.tern("define", "-", stdin: xml)
    }

    @Test func defineStartInspectAndStopAVM() throws {
        let daemon = try TestDaemon()
        defer { daemon.tearDown() }
        #expect(try define(daemon, TestDaemon.domainXML(name: "counter1", vcpus: 2)).out.contains("Domain 'counter1' defined"))
        #expect(try daemon.tern("start", "counter1").status == 0)
        #expect(daemon.waitForConsole("counter1", "TERN-GUEST: counter 3"))
        let list = try daemon.tern("list")
        #expect(list.out.contains("counter1") && list.out.contains("running"))
        let info = try daemon.tern("dominfo", "counter1")
        #expect(info.out.contains("State:          running"))
        #expect(info.out.contains("CPU mode:       host-passthrough"))
        let log = try daemon.tern("console", "counter1", "--log", "--lines", "5")
        #expect(log.out.contains("TERN-GUEST: counter"))
        // Attached on a terminal (`script` gives it one), the console shows the guest, and Ctrl-]
        // detaches at once, without waiting for Enter (the terminal is in raw mode).
        let attached = Process()
        attached.executableURL = URL(fileURLWithPath: "/usr/bin/script")
        let command = [packageRoot.appendingPathComponent(".build/debug/tern").path, "console", "counter1", "--connect", daemon.socket]
        attached.arguments = ["-qfec", command.joined(separator: " "), "/dev/null"]
        let keys = Pipe()
        let screen = Pipe()
        attached.standardInput = keys
        attached.standardOutput = screen
        try attached.run()
        Thread.sleep(forTimeInterval: 1.5)
        keys.fileHandleForWriting.write(Data([0x1d]))
        var detached = false
        for _ in 0..<100 where !detached {
            Thread.sleep(forTimeInterval: 0.1)
            detached = !attached.isRunning
        }
        if !detached { attached.terminate() }
        try? keys.fileHandleForWriting.close()
        #expect(detached, "Ctrl-] did not detach")
        let shown = String(decoding: screen.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(shown.contains("TERN-GUEST: counter"), "\(shown)")
        #expect(try daemon.tern("suspend", "counter1").status == 0)
        #expect(try daemon.tern("dominfo", "counter1").out.contains("paused"))
        #expect(try daemon.tern("resume", "counter1").status == 0)
        #expect(try daemon.tern("destroy", "counter1").status == 0)
        #expect(try daemon.tern("dominfo", "counter1").out.contains("shutoff"))
        #expect(try daemon.tern("undefine", "counter1").status == 0)
        #expect(try daemon.tern("dominfo", "counter1").status != 0)
    }

    @Test func aGuestThatPowersOffIsShutOff() throws {
        let daemon = try TestDaemon()
        defer { daemon.tearDown() }
        _ = try define(daemon, TestDaemon.domainXML(name: "flags", mode: "flags"))
        #expect(try daemon.tern("start", "flags").status == 0)
        #expect(daemon.waitForConsole("flags", "TERN-GUEST: done"))
        var state = ""
        for _ in 0..<100 where state != "shutoff" {
            state = try daemon.tern("dominfo", "flags", "--json").out.contains("\"state\" : \"shutoff\"") ? "shutoff" : ""
            Thread.sleep(forTimeInterval: 0.1)
        }
        #expect(state == "shutoff")
    }

    @Test func restartKeepsDefinitionsAndReconnectsToRunningVMs() throws {
        let daemon = try TestDaemon()
        defer { daemon.tearDown() }
        _ = try define(daemon, TestDaemon.domainXML(name: "survivor"))
        _ = try define(daemon, TestDaemon.domainXML(name: "idle"))
        #expect(try daemon.tern("start", "survivor").status == 0)
        #expect(daemon.waitForConsole("survivor", "TERN-GUEST: counter 2"))
        let before = try daemon.hypervisorPID("survivor")
        daemon.kill()
        try daemon.start()
        #expect(try daemon.tern("dominfo", "survivor", "--json").out.contains("\"state\" : \"running\""))
        let after = try daemon.hypervisorPID("survivor")
        #expect(before != nil && before == after)
        #expect(try daemon.tern("list").out.contains("idle"))
        let counter = daemon.lastCounter("survivor")
        #expect(daemon.waitForConsole("survivor", "TERN-GUEST: counter \(counter + 3)"))
        // The reattached VM is controllable.
        #expect(try daemon.tern("destroy", "survivor").status == 0)
    }

    /// A restarted daemon that cannot take a running VM's hypervisor back (here: something else
    /// holds QEMU's one QMP connection) keeps it, with its pid, rather than forgetting a live
    /// QEMU: `start` is refused (no second copy), and `destroy` ends it.
    @Test func aHypervisorTheDaemonCannotTakeBackIsKeptUntilDestroyed() throws {
        let daemon = try TestDaemon()
        defer { daemon.tearDown() }
        _ = try define(daemon, TestDaemon.domainXML(name: "held"))
        #expect(try daemon.tern("start", "held").status == 0)
        let pid = try #require(try daemon.hypervisorPID("held"))
        daemon.kill()
        let holder = tern_unix_connect(daemon.stateDirectory.appendingPathComponent("vms/held/control.sock").path)
        #expect(holder >= 0)
        defer { close(holder) }
        try daemon.start()
        let info = try daemon.tern("dominfo", "held").out
        #expect(info.contains("could not take its hypervisor back") && info.contains("pid \(pid)"), "\(info)")
        // Running: a process with a command line (an ended one waiting to be reaped has none).
        let running = { (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)).map { !$0.isEmpty } ?? false }
        #expect(running(), "the daemon ended a QEMU it could not take back")
        let start = try daemon.tern("start", "held")
        #expect(start.status != 0 && start.err.contains("still running as pid \(pid)"), "\(start.err)")
        #expect(try daemon.tern("destroy", "held").status == 0)
        #expect(!running(), "destroy left the QEMU running")
        #expect(try daemon.tern("dominfo", "held").out.contains("shutoff"))
    }

    /// A hypervisor of one of the daemon's VMs that the daemon never recorded (it ended between
    /// starting it and writing down its pid) is ended at the next start; nothing else is.
    @Test func aHypervisorTheDaemonNeverRecordedIsEndedAtRestart() throws {
        let daemon = try TestDaemon()
        defer { daemon.tearDown() }
        _ = try define(daemon, TestDaemon.domainXML(name: "ghost"))
        _ = try define(daemon, TestDaemon.domainXML(name: "kept"))
        #expect(try daemon.tern("start", "kept").status == 0)
        let kept = try #require(try daemon.hypervisorPID("kept"))
        let directory = daemon.stateDirectory.appendingPathComponent("vms/ghost")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let ghost = Process()
        ghost.executableURL = URL(fileURLWithPath: "/usr/bin/qemu-system-x86_64")
        ghost.arguments = [
            "-machine", "none", "-nodefaults", "-display", "none",
            "-qmp", "unix:\(directory.appendingPathComponent("control.sock").path),server=on,wait=off",
        ]
        try ghost.run()
        defer { if ghost.isRunning { ghost.terminate() } }
        daemon.kill()
        try daemon.start()
        for _ in 0..<50 where ghost.isRunning { Thread.sleep(forTimeInterval: 0.1) }
        #expect(!ghost.isRunning, "the unrecorded hypervisor still runs")
        #expect(try daemon.hypervisorPID("kept") == kept)
        #expect(try daemon.tern("dominfo", "kept").out.contains("running"))
    }

    @Test func aVMWhoseQEMUDiedWhileTheDaemonWasDownIsReportedCrashed() throws {
        let daemon = try TestDaemon()
        defer { daemon.tearDown() }
        _ = try define(daemon, TestDaemon.domainXML(name: "lost"))
        #expect(try daemon.tern("start", "lost").status == 0)
        #expect(daemon.waitForConsole("lost", "TERN-GUEST: counter 1"))
        let pid = try daemon.hypervisorPID("lost")
        #expect(pid != nil)
        daemon.kill()
        if let pid { kill(pid, SIGKILL) }
        Thread.sleep(forTimeInterval: 0.3)
        try daemon.start()
        let after = try daemon.tern("dominfo", "lost")
        #expect(after.out.contains("crashed"))
        #expect(after.out.contains("TERN-GUEST: counter"))
    }

    @Test func aHypervisorEndedFromOutsideIsCrashedWithItsLastMessage() throws {
        let daemon = try TestDaemon()
        defer { daemon.tearDown() }
        _ = try define(daemon, TestDaemon.domainXML(name: "ended"))
        #expect(try daemon.tern("start", "ended").status == 0)
        #expect(daemon.waitForConsole("ended", "TERN-GUEST: counter 1"))
        let pid = try #require(try daemon.hypervisorPID("ended"))
        kill(pid, SIGTERM)
        var info = ""
        for _ in 0..<100 where !info.contains("crashed") {
            Thread.sleep(forTimeInterval: 0.1)
            info = try daemon.tern("dominfo", "ended").out
        }
        #expect(info.contains("State:          crashed"))
        // What QEMU itself said as it went (to its hypervisor log, kept for its whole life).
        #expect(info.contains("terminating on signal 15"), "\(info)")
    }

    @Test func aPanickingGuestIsCrashedWithItsLastConsoleLines() throws {
        let daemon = try TestDaemon()
        defer { daemon.tearDown() }
        _ = try define(daemon, TestDaemon.domainXML(name: "panics", mode: "panic"))
        _ = try define(daemon, TestDaemon.domainXML(name: "bystander"))
        #expect(try daemon.tern("start", "bystander").status == 0)
        #expect(try daemon.tern("start", "panics").status == 0)
        var info = ""
        for _ in 0..<300 where !info.contains("crashed") {
            info = try daemon.tern("dominfo", "panics").out
            Thread.sleep(forTimeInterval: 0.1)
        }
        #expect(info.contains("State:          crashed"))
        #expect(info.contains("the guest kernel panicked"))
        #expect(info.contains("Kernel panic"))
        // The daemon and the other VM keep running.
        #expect(try daemon.tern("dominfo", "bystander").out.contains("running"))
    }

    @Test func badInputIsRefusedAndNothingElseIsDisturbed() async throws {
        let daemon = try TestDaemon()
        defer { daemon.tearDown() }
        _ = try define(daemon, TestDaemon.domainXML(name: "steady"))
        #expect(try daemon.tern("start", "steady").status == 0)

        let duplicate = try define(daemon, TestDaemon.domainXML(name: "steady"))
        #expect(duplicate.status != 0 && duplicate.err.contains("already defined"))
        let malformed = try define(daemon, "<domain>\n<name>x</name>\n<memory>1</memory\n</domain>")
        #expect(malformed.status != 0 && malformed.err.contains("malformed XML") && malformed.err.contains("<definition>:4:"))
        let unknownModel = try define(daemon, TestDaemon.domainXML(name: "m", cpu: "<cpu><model>Haswel</model></cpu>"))
        #expect(unknownModel.status != 0 && unknownModel.err.contains("did you mean 'Haswell'"))
        let unknownFeature = try define(
            daemon, TestDaemon.domainXML(name: "f", cpu: "<cpu><model>qemu64</model><feature name='avx3'/></cpu>"))
        #expect(unknownFeature.status != 0 && unknownFeature.err.contains("unknown CPU feature 'avx3'"))

        _ = try define(daemon, TestDaemon.domainXML(name: "toosmall", memoryMiB: 16))
        let small = try daemon.tern("start", "toosmall")
        #expect(small.status != 0 && small.err.contains("too small"))
        _ = try define(daemon, TestDaemon.domainXML(name: "nokernel", kernel: "/nonexistent/vmlinuz"))
        let missing = try daemon.tern("start", "nokernel")
        #expect(missing.status != 0 && missing.err.contains("kernel not found"))
        let garbage = daemon.stateDirectory.appendingPathComponent("garbage-kernel")
        try Data(repeating: 0x41, count: 8192).write(to: garbage)
        _ = try define(daemon, TestDaemon.domainXML(name: "garbage", kernel: garbage.path))
        let bad = try daemon.tern("start", "garbage")
        #expect(bad.status != 0 && bad.err.contains("failed to start"), "\(bad.err)")
        _ = try define(daemon, TestDaemon.domainXML(name: "haswell", cpu: "<cpu><model>Haswell-noTSX</model></cpu>"))
        let cpu = try daemon.tern("start", "haswell")
        #expect(cpu.status != 0 && cpu.err.contains("missing features") && cpu.err.contains("x2apic"), "\(cpu.err)")

        // A name is a directory under the state directory too.
        let dots = try define(daemon, TestDaemon.domainXML(name: ".."))
        #expect(dots.status != 0 && dots.err.contains("may not begin with '.'"), "\(dots.err)")
        // Paths are the daemon's to open: the CLI makes a relative one whole, and the API refuses one.
        let relative = try daemon.tern("migrate", "steady", "--to", "nowhere/ternd.sock")
        let whole = FileManager.default.currentDirectoryPath + "/nowhere/ternd.sock"
        #expect(relative.status != 0 && relative.err.contains(whole), "\(relative.err)")
        let api = APIClient(endpoint: .unixSocket(daemon.socket))
        await #expect {
            let _: SaveReport = try await api.post("/vms/steady/save", body: SaveRequest(path: "steady.tern"))
        } throws: { "\($0)".contains("'steady.tern' must be absolute") }
        // Numbers the CLI would refuse, sent through the API.
        await #expect {
            let _: ConsoleText = try await api.get("/vms/steady/console?lines=-1")
        } throws: { "\($0)".contains("must not be negative") }
        await #expect {
            let _: MigrationReport = try await api.post(
                "/vms/steady/migrate", body: MigrateRequest(destination: "/nowhere.sock", parameters: MigrationParameters(), timeoutSeconds: Int.max))
        } throws: { "\($0)".contains("--timeout must be 1 s to 7 days") }

        // After all that, the daemon and its running VM are fine.
        let counter = daemon.lastCounter("steady")
        #expect(daemon.waitForConsole("steady", "TERN-GUEST: counter \(counter + 2)"))
        #expect(try daemon.tern("dominfo", "steady").out.contains("running"))
    }

    /// Two starts of one VM at once: one hypervisor, and the other start is refused.
    @Test func twoStartsAtOnceStartOneHypervisor() throws {
        let daemon = try TestDaemon()
        defer { daemon.tearDown() }
        _ = try define(daemon, TestDaemon.domainXML(name: "once"))
        let results = Runs()
        DispatchQueue.concurrentPerform(iterations: 2) { _ in
            if let run = try? daemon.tern("start", "once") { results.append(run) }
        }
        let runs = results.all
        #expect(runs.count == 2 && runs.filter { $0.status == 0 }.count == 1, "\(runs)")
        let refused = runs.first { $0.status != 0 }
        #expect(refused.map { $0.err.contains("being started") || $0.err.contains("it is running") } == true, "\(runs)")
        let directory = daemon.stateDirectory.appendingPathComponent("vms/once").path
        let hypervisors = try runProgram(URL(fileURLWithPath: "/usr/bin/pgrep"), ["-f", "qemu-system.*\(directory)/"]).out
        #expect(hypervisors.split(separator: "\n").count == 1, "hypervisors: \(hypervisors)")
    }

    @Test func daemonsSideBySideOfferDifferentCPUs() throws {
        let modern = try TestDaemon()
        let old = try TestDaemon(hostCPU: packageRoot.appendingPathComponent("\(cpuidDumps)/Core-i7-2600.xml").path)
        defer {
            modern.tearDown()
            old.tearDown()
        }
        let xml = TestDaemon.domainXML(name: "needs-avx2", mode: "flags", cpu: "<cpu><model>Nehalem</model><feature policy='disable' name='vme'/><feature name='avx2'/></cpu>")
        _ = try define(modern, xml)
        _ = try define(old, xml)
        #expect(try modern.tern("start", "needs-avx2").status == 0)
        let refused = try old.tern("start", "needs-avx2")
        #expect(refused.status != 0 && refused.err.contains("avx2"))
    }

    @Test func theAPIIsServedOnTCPWhenAskedAndOneDaemonPerStateDirectory() throws {
        let port = 17_000 + Int(getpid() % 2000)
        let daemon = try TestDaemon(extraArguments: ["--listen", "127.0.0.1:\(port)"])
        defer { daemon.tearDown() }
        _ = try define(daemon, TestDaemon.domainXML(name: "over-tcp"))
        let list = try tern(arguments: ["list", "--connect", "tcp://127.0.0.1:\(port)"])
        #expect(list.status == 0 && list.out.contains("over-tcp"))
        // A second daemon on the same state directory is refused and the first keeps working.
        let second = try runProgram(
            packageRoot.appendingPathComponent(".build/debug/ternd"), ["--state-dir", daemon.stateDirectory.path], timeout: 60)
        #expect(second.status != 0 && second.err.contains("already using the state directory"))
        #expect(try daemon.tern("list").out.contains("over-tcp"))
    }

    /// Every reply carries the HTTP headers a server with a clock owes its clients.
    @Test func repliesCarryDateAndServerHeaders() throws {
        let daemon = try TestDaemon()
        defer { daemon.tearDown() }
        let connection = tern_unix_connect(daemon.socket)
        #expect(connection >= 0)
        let handle = FileHandle(fileDescriptor: connection, closeOnDealloc: true)
        handle.write(Data("GET /vms HTTP/1.1\r\nHost: ternd\r\nConnection: close\r\n\r\n".utf8))
        let reply = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
        #expect(reply.hasPrefix("HTTP/1.1 200"), "\(reply)")
        #expect(reply.contains("Server: ternd\r\n"), "\(reply)")
        #expect(reply.contains("Tern-API: 1\r\n"), "\(reply)")
        // IMF-fixdate, e.g. "Date: Sun, 06 Nov 1994 08:49:37 GMT", and today's.
        let date = reply.split(separator: "\r\n").first { $0.hasPrefix("Date: ") }.map { String($0.dropFirst(6)) }
        let format = try Regex(#"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT$"#)
        #expect(date?.wholeMatch(of: format) != nil, "\(String(describing: date))")
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        let sent = try #require(date.flatMap { formatter.date(from: $0) })
        #expect(abs(sent.timeIntervalSinceNow) < 60)
    }

    @Test func anUnreachableDaemonIsAClearError() throws {
        let run = try tern(arguments: ["list", "--connect", "/nonexistent/ternd.sock"])
        #expect(run.status != 0 && run.err.contains("cannot reach ternd at /nonexistent/ternd.sock"))
    }

    @Test func missingQEMUIsAClearError() throws {
        let run = try runProgram(
            packageRoot.appendingPathComponent(".build/debug/tern"), TestGuest.runArguments(mode: "flags"),
            environment: ["TERN_QEMU": "/nonexistent/qemu-system-x86_64"])
        #expect(run.status != 0 && run.err.contains("/nonexistent/qemu-system-x86_64 is not installed"))
    }
}

/// Runs of the CLI made on several threads at once.
final class Runs: @unchecked Sendable {
    private let lock = NSLock()
    private var runs: [ProgramRun] = []
    func append(_ run: ProgramRun) { lock.withLock { runs.append(run) } }
    var all: [ProgramRun] { lock.withLock { runs } }
}
