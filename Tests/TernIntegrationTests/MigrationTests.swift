import CTernHost
import Foundation
import TernAPI
import TernHypervisor
import TernSaveFile
import TernTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Moving real VMs between daemons: live migration, save/restore, every row of MISSION.md's two
/// tables on hosts that offer different CPUs, and every way a move can fail without losing the VM.
@Suite(.serialized) struct MigrationTests {
    init() throws { try TestGuest.ensureBuilt() }

    // MARK: - Hosts

    /// A host CPU description: kvm64 (or `model`) of `vendor` plus `features`, written to a file.
    /// VME is left out: TCG cannot offer it, and a pool over these descriptions must be one every
    /// host can give.
    static func hostCPU(_ features: [String], vendor: String = "Intel", model: String = "kvm64") throws -> String {
        let xml = "<cpu mode='custom' match='exact'>\n  <model>\(model)</model>\n  <vendor>\(vendor)</vendor>\n"
            + "  <feature policy='disable' name='vme'/>\n"
            + features.map { "  <feature policy='require' name='\($0)'/>\n" }.joined() + "</cpu>\n"
        // Named for its content, so that runs after runs reuse the same files rather than pile them up.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tern-test-host-cpus")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let url = directory.appendingPathComponent(([vendor, model] + features).joined(separator: "-") + ".xml")
        try xml.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    /// What every host of the tables has besides X, Y, Z (SSSE3 too: a guest whose CPU has SSE4
    /// but not SSSE3 is not something real processors produce, and its libc may assume it).
    static let common = ["ssse3", "aes"]

    static let compatibilityMetadata =
        "<metadata><tern:cpu xmlns:tern='https://tern.dev/xmlns/domain/1' mode='compatibility'/></metadata>"

    /// Pool mode over the CPUs in `files`.
    static func poolMetadata(_ files: [String]) throws -> String {
        let members = try files.map { try String(contentsOfFile: $0, encoding: .utf8) }.joined()
        return "<metadata><tern:cpu xmlns:tern='https://tern.dev/xmlns/domain/1' mode='pool'>\(members)</tern:cpu></metadata>"
    }

    // MARK: - Helpers

    /// Runs `body` with two fresh daemons (host CPUs as given, or this machine's), then ends them.
    func withTwoDaemons(_ cpuA: String?, _ cpuB: String?, _ body: (TestDaemon, TestDaemon) throws -> Void) throws {
        let a = try TestDaemon(hostCPU: cpuA)
        defer { a.tearDown() }
        let b = try TestDaemon(hostCPU: cpuB)
        defer { b.tearDown() }
        try body(a, b)
    }

    /// A daemon that also serves its API on TCP, and the endpoint to reach it there: moves to it
    /// through that endpoint stream over TCP, as between two machines.
    func daemonOnTCP() throws -> (TestDaemon, String) {
        let port = try freeTCPPort()
        return (try TestDaemon(extraArguments: ["--listen", "127.0.0.1:\(port)"]), "tcp://127.0.0.1:\(port)")
    }

    /// Runs `body` with a source daemon and a destination named by its TCP endpoint (given too).
    func withTCPDestination(_ body: (TestDaemon, TestDaemon, String) throws -> Void) throws {
        let a = try TestDaemon()
        defer { a.tearDown() }
        let (b, endpoint) = try daemonOnTCP()
        defer { b.tearDown() }
        try body(a, b, endpoint)
    }

    /// The TCP port the process `pid` listens on.
    func listeningPort(of pid: Int32) throws -> Substring {
        let listening = try runProgram(URL(fileURLWithPath: "/usr/bin/ss"), ["-Hltnp"]).out.split(separator: "\n").first { $0.contains("pid=\(pid),") }
        return try #require(listening?.split(separator: " ", omittingEmptySubsequences: true)[3].split(separator: ":").last)
    }

    /// Kills every TCP connection to `port` (what `ss` printed of them).
    func cutConnections(to port: Substring) throws -> ProgramRun {
        try runProgram(URL(fileURLWithPath: "/usr/bin/ss"), ["-K", "-tn", "dport", "=", ":\(port)"])
    }

    /// Defines and starts a counting VM on `daemon` and waits until it counts.
    func boot(_ name: String, on daemon: TestDaemon, mode: String = "counter", cpu: String = "", memoryMiB: Int = 192) throws {
        let defined = try daemon.tern("define", "-", stdin: TestDaemon.domainXML(name: name, mode: mode, memoryMiB: memoryMiB, cpu: cpu))
        try #require(defined.status == 0, "define: \(defined.err)")
        let started = try daemon.tern("start", name)
        try #require(started.status == 0, "start: \(started.err)")
        try #require(daemon.waitForConsole(name, "TERN-GUEST: counter 2"), "no counter: \(daemon.consoleLog(name).suffix(500))")
    }

    func migrate(_ name: String, from source: TestDaemon, to destination: TestDaemon, _ options: String...) throws -> ProgramRun {
        try migrate(name, from: source, to: destination, options)
    }

    func migrate(_ name: String, from source: TestDaemon, to destination: TestDaemon, _ options: [String]) throws -> ProgramRun {
        try source.tern(arguments: ["migrate", name, "--to", destination.socket] + options)
    }

    /// What the destination's API answers a source that gives up an incoming VM (nil: an error).
    func abortIncoming(_ name: String, on daemon: TestDaemon) throws -> VMInfo? {
        let answer = Answer()
        let done = DispatchSemaphore(value: 0)
        Task {
            answer.info = try? await APIClient(endpoint: .unixSocket(daemon.socket), timeout: .seconds(60))
                .delete("/migrations/incoming/\(name)", as: VMInfo.self)
            done.signal()
        }
        done.wait()
        return answer.info
    }

    final class Answer: @unchecked Sendable { var info: VMInfo? }

    func state(_ name: String, on daemon: TestDaemon) throws -> String? {
        let info = try daemon.tern("dominfo", name)
        guard info.status == 0 else { return nil }
        return info.out.split(separator: "\n").first { $0.hasPrefix("State:") }.map {
            $0.dropFirst("State:".count).trimmingCharacters(in: .whitespaces)
        }
    }

    /// Every counter value in console text, in order.
    static func counters(_ text: String) -> [Int] { TestGuest.numbers(after: "counter ", in: text) }

    /// The VM moved from `source` to `destination` and went on counting: the two console logs
    /// together count 1, 2, 3 … with no value missing or repeated, and the destination's log
    /// holds no boot (no reset).
    func expectContinuity(_ name: String, from source: TestDaemon, to destination: TestDaemon, sourceLog: String? = nil) throws {
        let before = sourceLog ?? source.consoleLog(name)
        let last = Self.counters(before).last ?? 0
        #expect(destination.waitForConsole(name, "TERN-GUEST: counter \(last + 3)"), "the guest stopped counting after \(last)")
        let after = destination.consoleLog(name)
        #expect(!after.contains("TERN-GUEST: booted"), "the guest rebooted on the destination")
        // The line in flight when the source stopped may be split between the two logs.
        let all = Self.counters(before + after)
        #expect(!all.isEmpty && all == Array(1...all.count), "counter not continuous: \(all.suffix(20))")
    }

    // MARK: - Live migration and save/restore

    @Test func liveMigrationKeepsTheGuestCountingBothWays() throws {
        try withTwoDaemons(nil, nil) { a, b in
            try boot("mover", on: a)
            #expect(a.waitForConsole("mover", "TERN-GUEST: counter 5"))
            // Capped so that progress shows up; two connections (multifd).
            let run = try migrate("mover", from: a, to: b, "--verbose", "--bandwidth", "48", "--connections", "2")
            #expect(run.status == 0, "\(run.err)")
            #expect(run.out.contains("Domain 'mover' migrated to \(b.socket) (live); it is running there"))
            #expect(run.out.contains("downtime") && run.out.contains("transferred"))
            // Both daemons on this machine, named by their Unix sockets: the stream takes one too.
            #expect(run.out.contains("stream       unix \(b.stateDirectory.path)/vms/mover/incoming.sock"), "\(run.out)")
            // Progress as `virsh migrate --verbose` shows it, with what was sent, what is left,
            // the rate, the guest's dirty rate and the pass (the final "[100 %]" line aside).
            let progress = run.err.split(separator: "\n").filter { $0.hasPrefix("Migration: [") && !$0.contains("[100 %]") }
            #expect(
                progress.contains { $0.contains(" MiB sent, ") && $0.contains(" MiB left, ") && $0.contains(" MiB/s, dirtying ") && $0.contains(", round ") },
                "no progress shown: \(run.err)")
            #expect(try state("mover", on: b) == "running")
            #expect(try state("mover", on: a) == nil, "the source still has the VM")
            try expectContinuity("mover", from: a, to: b)
            // A source that lost the confirmation asks the destination to discard its copy: one that
            // has arrived stays, and the answer says so.
            let kept = try abortIncoming("mover", on: b)
            #expect(kept?.state == "running", "\(String(describing: kept))")
            #expect(try state("mover", on: b) == "running")
            // And back, uncapped, with one connection (A's old log is replaced when the VM arrives;
            // B's stays, with what the guest printed there until it left).
            let firstLeg = a.consoleLog("mover")
            let back = try migrate("mover", from: b, to: a, "--connections", "1")
            #expect(back.status == 0, "\(back.err)")
            #expect(try state("mover", on: a) == "running")
            #expect(try state("mover", on: b) == nil)
            try expectContinuity("mover", from: b, to: a, sourceLog: firstLeg + b.consoleLog("mover"))
        }
    }

    /// A guest that keeps rewriting memory (and checks it) arrives with that memory intact, move
    /// after move: every checksum pass it completes on the destinations is "ok". Under TCG,
    /// QEMU's dirty tracking misses writes once a live migration makes more than 3 passes (a
    /// `--max-downtime` of 20 ms often needs more): such a move must never be committed live,
    /// but made again with the guest paused. A default move makes two passes, so it is always live.
    @Test func memoryArrivesIntactMoveAfterMove() throws {
        try withTwoDaemons(nil, nil) { a, b in
            try boot("keeper", on: a, mode: "memcheck tern.dirty_mb=24")
            #expect(a.waitForConsole("keeper", "TERN-GUEST: memcheck pass 2 ok"), "\(a.consoleLog("keeper").suffix(400))")
            var (from, to) = (a, b)
            let moves: [[String]] = [[], ["--max-downtime", "20"], ["--max-downtime", "20"], ["--no-live"], []]
            for (move, options) in moves.enumerated() {
                let run = try migrate("keeper", from: from, to: to, options)
                try #require(run.status == 0, "move \(move) \(options): \(run.err)")
                if options == ["--no-live"] {
                    #expect(run.out.contains("(non-live)"), "\(run.out)")
                } else if options.isEmpty {
                    #expect(run.out.contains("(live)") && Self.rounds(in: run.out) == 2, "move \(move): \(run.out)")
                } else if run.out.contains("(live)") {
                    // Committed live: at most the 3 passes TCG tracks exactly.
                    let rounds = Self.rounds(in: run.out)
                    #expect(rounds != nil && rounds! <= 3, "move \(move) \(options): \(run.out)")
                } else {
                    #expect(run.out.contains("(non-live)") && run.out.contains("moved again with the guest paused"), "\(run.out)")
                }
                // Passes that ran on this side, at least two of them wholly after the arrival.
                var checked: [Int] = []
                for _ in 0..<300 where checked.isEmpty {
                    Thread.sleep(forTimeInterval: 0.1)
                    checked = TestGuest.numbers(after: "memcheck pass ", in: to.consoleLog("keeper"))
                }
                let first = try #require(checked.first, "move \(move): no pass completed on the destination")
                #expect(to.waitForConsole("keeper", "TERN-GUEST: memcheck pass \(first + 2) "), "move \(move): no more passes")
                let log = to.consoleLog("keeper")
                #expect(!log.contains("MISMATCH") && !log.contains("Oops") && !log.contains("Kernel panic"), "move \(move) \(options): \(log.suffix(600))")
                (from, to) = (to, from)
            }
        }
    }

    /// The passes `tern migrate` reports ("transferred  … in N rounds").
    static func rounds(in report: String) -> Int? {
        guard let line = report.split(separator: "\n").first(where: { $0.contains("transferred") }),
            let range = line.range(of: " in ")
        else { return nil }
        return Int(line[range.upperBound...].prefix { $0.isNumber })
    }

    /// Post-copy needs its capability on both QEMUs (the destination fetches missing pages from
    /// the source once the guest runs there); auto-converge only on the source.
    @Test func postcopyThereAndAutoConvergeBack() throws {
        try withTwoDaemons(nil, nil) { a, b in
            // A guest that dirties memory (and counts), so that passes keep coming.
            try boot("stretch", on: a, mode: "memtouch")
            #expect(a.waitForConsole("stretch", "TERN-GUEST: counter 5"))
            // Capped, so that the second pass comes while pages are still dirty and the switch to
            // post-copy happens mid-stream (`--verbose` then shows "(post-copy)").
            let there = try migrate("stretch", from: a, to: b, "--postcopy", "--bandwidth", "48")
            #expect(there.status == 0, "\(there.err)")
            #expect(try state("stretch", on: b) == "running")
            #expect(try state("stretch", on: a) == nil)
            try expectContinuity("stretch", from: a, to: b)
            let firstLeg = a.consoleLog("stretch")
            let back = try migrate("stretch", from: b, to: a, "--auto-converge")
            #expect(back.status == 0, "\(back.err)")
            #expect(try state("stretch", on: a) == "running")
            try expectContinuity("stretch", from: b, to: a, sourceLog: firstLeg + b.consoleLog("stretch"))
        }
    }

    @Test func aPausedVMArrivesPaused() throws {
        try withTwoDaemons(nil, nil) { a, b in
            try boot("sleeper", on: a)
            #expect(try a.tern("suspend", "sleeper").status == 0)
            let run = try migrate("sleeper", from: a, to: b)
            #expect(run.status == 0, "\(run.err)")
            #expect(try state("sleeper", on: b) == "paused")
            #expect(try b.tern("resume", "sleeper").status == 0)
            try expectContinuity("sleeper", from: a, to: b)
        }
    }

    @Test func saveThenRestoreOnAnotherDaemon() throws {
        try withTwoDaemons(nil, nil) { a, b in
            try boot("saved", on: a)
            let file = a.stateDirectory.appendingPathComponent("saved.ternsave").path
            let save = try a.tern("save", "saved", file)
            #expect(save.status == 0, "\(save.err)")
            #expect(save.out.contains("Domain 'saved' saved to \(file)"))
            #expect(try state("saved", on: a) == "shutoff")
            let sourceLog = a.consoleLog("saved")
            let last = Self.counters(sourceLog).last ?? 0
            Thread.sleep(forTimeInterval: 0.5)
            #expect(Self.counters(a.consoleLog("saved")).last == last, "the saved VM went on running")
            let restore = try b.tern("restore", file)
            #expect(restore.status == 0, "\(restore.err)")
            #expect(restore.out.contains("Domain 'saved' restored from \(file)"))
            #expect(try state("saved", on: b) == "running")
            try expectContinuity("saved", from: a, to: b, sourceLog: sourceLog)
            // The same file again, under another name, on the first daemon.
            let again = try a.tern("restore", file, "--name", "saved-copy")
            #expect(again.status == 0, "\(again.err)")
            #expect(a.waitForConsole("saved-copy", "TERN-GUEST: counter \(last + 2)"))
        }
    }

    /// The guest reports its free memory through the balloon (Tern's default), the hypervisor
    /// gives it back to the host, and a save carries it as zero pages: after boot the guest frees
    /// the compressed kernel image it started from (~14 MiB for Debian's cloud kernel).
    @Test func freeMemoryTheGuestReportsIsNotSaved() throws {
        try withTwoDaemons(nil, nil) { a, _ in
            try boot("reporting", on: a)
            try boot("no-balloon", on: a, cpu: "<devices><memballoon model='none'/></devices>")
            // Free page reporting waits two seconds after memory is freed.
            for name in ["reporting", "no-balloon"] {
                #expect(a.waitForConsole(name, "TERN-GUEST: counter 6"), "\(name) stopped counting")
            }
            var sizes: [String: Int] = [:]
            for name in ["reporting", "no-balloon"] {
                let file = a.stateDirectory.appendingPathComponent("\(name).ternsave").path
                let save = try a.tern("save", name, file)
                try #require(save.status == 0, "\(save.err)")
                sizes[name] = try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int
            }
            let reporting = try #require(sizes["reporting"]), unreported = try #require(sizes["no-balloon"])
            #expect(reporting < unreported - 8 << 20, "saved \(reporting) bytes with free page reporting, \(unreported) without")
            // And the guest saved with its balloon comes back.
            let file = a.stateDirectory.appendingPathComponent("reporting.ternsave").path
            let restore = try a.tern("restore", file)
            #expect(restore.status == 0, "\(restore.err)")
            #expect(a.waitForConsole("reporting", "TERN-GUEST: counter 8"))
        }
    }

    @Test func quickMigrationThroughASharedDirectory() throws {
        try withTwoDaemons(nil, nil) { a, b in
            try boot("quick", on: a)
            let shared = a.stateDirectory.path
            let run = try migrate("quick", from: a, to: b, "--quick", shared)
            #expect(run.status == 0, "\(run.err)")
            #expect(run.out.contains("(quick)"))
            #expect(try state("quick", on: b) == "running")
            #expect(try state("quick", on: a) == nil)
            try expectContinuity("quick", from: a, to: b)
            #expect(try FileManager.default.contentsOfDirectory(atPath: shared).allSatisfy { !$0.hasSuffix(".ternsave") })
        }
    }

    // MARK: - MISSION.md, table 1: without compatibility mode

    /// Each row: a VM booted on A moves to B, and one booted on B moves to A.
    @Test(arguments: [
        ("X, Y, Z → X, Y, Z", ["popcnt", "sse4.1", "sse4.2"], ["popcnt", "sse4.1", "sse4.2"], true, true),
        ("X, Y, Z → X, Y", ["popcnt", "sse4.1", "sse4.2"], ["popcnt", "sse4.1"], false, true),
        ("X, Y → X, Y, Z", ["popcnt", "sse4.1"], ["popcnt", "sse4.1", "sse4.2"], true, false),
        ("X, Y → Y, Z", ["popcnt", "sse4.1"], ["sse4.1", "sse4.2"], false, false),
    ])
    func table1WithoutCompatibilityMode(row: String, hostA: [String], hostB: [String], aToB: Bool, bToA: Bool) throws {
        try withTwoDaemons(try Self.hostCPU(hostA + Self.common), try Self.hostCPU(hostB + Self.common)) { a, b in
            try expectMove("from-a", bootedOn: a, to: b, succeeds: aToB, missing: Set(hostA).subtracting(hostB), row: row)
            try expectMove("from-b", bootedOn: b, to: a, succeeds: bToA, missing: Set(hostB).subtracting(hostA), row: row)
        }
    }

    /// Boots a VM (host CPU unless `cpu` says otherwise) on `source`, moves it to `destination`
    /// and checks the outcome: moved and counting, or refused naming `missing` with the VM still
    /// running on the source and nothing left on the destination.
    func expectMove(
        _ name: String, bootedOn source: TestDaemon, to destination: TestDaemon, cpu: String = "", succeeds: Bool,
        missing: Set<String>, row: String
    ) throws {
        try boot(name, on: source, cpu: cpu)
        let run = try migrate(name, from: source, to: destination)
        if succeeds {
            #expect(run.status == 0, "\(row): \(run.err)")
            #expect(try state(name, on: destination) == "running", "\(row)")
            try expectContinuity(name, from: source, to: destination)
            _ = try destination.tern("destroy", name)
        } else {
            #expect(run.status != 0, "\(row): the move should be refused")
            #expect(run.err.contains("processor compatibility check refused"), "\(row): \(run.err)")
            for feature in missing { #expect(run.err.contains(feature), "\(row): \(feature) not named in \(run.err)") }
            #expect(run.err.contains("the VM is running on the source"), "\(row): \(run.err)")
            #expect(try state(name, on: source) == "running", "\(row)")
            #expect(try state(name, on: destination) == nil, "\(row): the destination kept something")
            let last = source.lastCounter(name)
            #expect(source.waitForConsole(name, "TERN-GUEST: counter \(last + 2)"), "\(row): the VM stopped counting")
            _ = try source.tern("destroy", name)
        }
    }

    // MARK: - MISSION.md, table 2: the pool baseline (and the classic mask)

    @Test(arguments: [
        ("X, Y, Z | X, Y, Z", ["popcnt", "sse4.1", "sse4.2"], ["popcnt", "sse4.1", "sse4.2"], ["popcnt", "sse4_1", "sse4_2"], [String]()),
        ("X, Y, Z | X, Y", ["popcnt", "sse4.1", "sse4.2"], ["popcnt", "sse4.1"], ["popcnt", "sse4_1"], ["sse4_2"]),
        ("X, Y | X, Y, Z", ["popcnt", "sse4.1"], ["popcnt", "sse4.1", "sse4.2"], ["popcnt", "sse4_1"], ["sse4_2"]),
        ("X, Y | Y, Z", ["popcnt", "sse4.1"], ["sse4.1", "sse4.2"], ["sse4_1"], ["popcnt", "sse4_2"]),
    ])
    func table2PoolMode(row: String, hostA: [String], hostB: [String], guestHas: [String], guestLacks: [String]) throws {
        let fileA = try Self.hostCPU(hostA + Self.common)
        let fileB = try Self.hostCPU(hostB + Self.common)
        try withTwoDaemons(fileA, fileB) { a, b in
            let pool = try Self.poolMetadata([fileA, fileB])
            // A → B and back, and a VM booted on B to A.
            try boot("pooled", on: a, cpu: pool)
            let flags = guestFlags(a.consoleLog("pooled"))
            for feature in guestHas { #expect(flags.contains(feature), "\(row): guest lacks \(feature): \(flags)") }
            for feature in guestLacks { #expect(!flags.contains(feature), "\(row): guest has \(feature)") }
            #expect(flags.contains("aes") && flags.contains("ssse3"), "\(row): the common aes or ssse3 is missing")
            let there = try migrate("pooled", from: a, to: b)
            #expect(there.status == 0, "\(row): A → B: \(there.err)")
            try expectContinuity("pooled", from: a, to: b)
            let firstLeg = a.consoleLog("pooled")
            let back = try migrate("pooled", from: b, to: a)
            #expect(back.status == 0, "\(row): B → A: \(back.err)")
            try expectContinuity("pooled", from: b, to: a, sourceLog: firstLeg + b.consoleLog("pooled"))
            try expectMove("pooled-b", bootedOn: b, to: a, cpu: pool, succeeds: true, missing: [], row: row)
        }
    }

    @Test(arguments: [
        ("X, Y, Z | X, Y, Z", ["popcnt", "sse4.1", "sse4.2"], ["popcnt", "sse4.1", "sse4.2"]),
        ("X, Y, Z | X, Y", ["popcnt", "sse4.1", "sse4.2"], ["popcnt", "sse4.1"]),
        ("X, Y | X, Y, Z", ["popcnt", "sse4.1"], ["popcnt", "sse4.1", "sse4.2"]),
        ("X, Y | Y, Z", ["popcnt", "sse4.1"], ["sse4.1", "sse4.2"]),
    ])
    func table2ClassicModeInsideItsMask(row: String, hostA: [String], hostB: [String]) throws {
        // POPCNT, SSE4.1 and SSE4.2 (and the common SSSE3) are all in the Intel mask: every move
        // succeeds and the guest has none of them.
        try withTwoDaemons(try Self.hostCPU(hostA + Self.common), try Self.hostCPU(hostB + Self.common)) { a, b in
            try boot("classic-a", on: a, cpu: Self.compatibilityMetadata)
            let flags = guestFlags(a.consoleLog("classic-a"))
            for feature in ["popcnt", "sse4.1", "sse4.2"] { #expect(!flags.contains(feature), "\(row): guest has \(feature)") }
            _ = try a.tern("destroy", "classic-a")
            try expectMove("classic-a2", bootedOn: a, to: b, cpu: Self.compatibilityMetadata, succeeds: true, missing: [], row: row)
            try expectMove("classic-b", bootedOn: b, to: a, cpu: Self.compatibilityMetadata, succeeds: true, missing: [], row: row)
        }
    }

    @Test func classicModeRefusesDifferencesOutsideItsMask() throws {
        // AES is not in the 2009 mask: a classic-mode VM from a host with AES cannot go to one without.
        let withAES = try Self.hostCPU(["ssse3", "popcnt", "xsave", "aes"])
        let withoutAES = try Self.hostCPU(["ssse3", "popcnt", "xsave"])
        try withTwoDaemons(withAES, withoutAES) { a, b in
            try expectMove(
                "classic-aes", bootedOn: a, to: b, cpu: Self.compatibilityMetadata, succeeds: false, missing: ["aes"],
                row: "classic, aes outside the mask")
            try expectMove(
                "classic-noaes", bootedOn: b, to: a, cpu: Self.compatibilityMetadata, succeeds: true, missing: [],
                row: "classic, towards the host with aes")
        }
    }

    /// The flags the guest printed at boot.
    func guestFlags(_ log: String) -> Set<String> {
        guard let line = log.split(whereSeparator: \.isNewline).first(where: { $0.contains("TERN-GUEST: flags=") }),
            let range = line.range(of: "flags=")
        else { return [] }
        return Set(line[range.upperBound...].split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) })
    }

    // MARK: - Refusals and failures: the VM is never lost

    @Test func crossVendorMovesAreRefusedInAnyMode() throws {
        let intel = try TestDaemon(hostCPU: try Self.hostCPU(["ssse3", "aes"]))
        let amd = try TestDaemon(hostCPU: try Self.hostCPU([], vendor: "AMD", model: "Opteron_G3"))
        defer {
            intel.tearDown()
            amd.tearDown()
        }
        try boot("intel-vm", on: intel, cpu: Self.compatibilityMetadata)
        let run = try migrate("intel-vm", from: intel, to: amd)
        #expect(run.status != 0)
        #expect(run.err.contains("moving between vendors is never allowed"), "\(run.err)")
        #expect(try state("intel-vm", on: intel) == "running")
        #expect(try state("intel-vm", on: amd) == nil)
        // Nor by a quick migration, whose refusal comes before anything is saved.
        let shared = intel.stateDirectory.appendingPathComponent("shared")
        try FileManager.default.createDirectory(at: shared, withIntermediateDirectories: true)
        let pid = try intel.hypervisorPID("intel-vm")
        let quick = try migrate("intel-vm", from: intel, to: amd, "--quick", shared.path)
        #expect(quick.status != 0)
        #expect(quick.err.contains("compatibility check") && quick.err.contains("moving between vendors is never allowed"), "\(quick.err)")
        #expect(try state("intel-vm", on: intel) == "running")
        #expect(try intel.hypervisorPID("intel-vm") == pid, "the VM was saved and restored all the same")
        #expect(try FileManager.default.contentsOfDirectory(atPath: shared.path).isEmpty)
        let counted = intel.lastCounter("intel-vm")
        #expect(intel.waitForConsole("intel-vm", "TERN-GUEST: counter \(counted + 2)"), "the VM stopped counting")
        // Nor the other way, with the host's own CPU.
        try boot("amd-vm", on: amd)
        let back = try migrate("amd-vm", from: amd, to: intel)
        #expect(back.status != 0 && back.err.contains("moving between vendors is never allowed"), "\(back.err)")
        #expect(try state("amd-vm", on: amd) == "running")
        #expect(try state("amd-vm", on: intel) == nil)
        _ = try amd.tern("destroy", "amd-vm")
        // Nor through a save file.
        let file = intel.stateDirectory.appendingPathComponent("intel.ternsave").path
        #expect(try intel.tern("save", "intel-vm", file).status == 0)
        let restore = try amd.tern("restore", file)
        #expect(restore.status != 0)
        #expect(restore.err.contains("moving between vendors is never allowed"), "\(restore.err)")
        #expect(try state("intel-vm", on: amd) == nil)
        #expect(try intel.tern("restore", file).status == 0, "the file still restores on its own host")
    }

    /// Starts a slow (capped) migration in the background and waits until the destination is
    /// receiving. Returns the running `tern migrate` and the receiving QEMU's pid.
    func startSlowMigration(
        _ name: String, from a: TestDaemon, to b: TestDaemon, endpoint: String? = nil, report: FileHandle? = nil,
        _ options: [String] = []
    ) throws -> (Process, Pipe, Int32) {
        let process = Process()
        process.executableURL = packageRoot.appendingPathComponent(".build/debug/tern")
        process.arguments = ["migrate", name, "--to", endpoint ?? b.socket, "--bandwidth", "8", "--connect", a.socket] + options
        let pipe = Pipe()
        process.standardError = pipe
        process.standardOutput = report ?? FileHandle.nullDevice
        try process.run()
        var pid: Int32?
        for _ in 0..<200 where pid == nil {
            Thread.sleep(forTimeInterval: 0.05)
            let info = try b.tern("dominfo", name, "--json").out
            if info.contains("\"state\" : \"incoming\""), let range = info.range(of: "\"pid\" : ") {
                pid = Int32(info[range.upperBound...].prefix { $0.isNumber })
            }
        }
        guard let pid else { throw DaemonError(message: "the destination never started receiving") }
        Thread.sleep(forTimeInterval: 1)  // well into the transfer
        return (process, pipe, pid)
    }

    /// The threads of the QEMU that runs `name` on `daemon`.
    func qemuThreads(of name: String, on daemon: TestDaemon) throws -> [Int32] {
        let info = try daemon.tern("dominfo", name, "--json").out
        guard let range = info.range(of: "\"pid\" : "), let pid = Int32(info[range.upperBound...].prefix { $0.isNumber }) else {
            throw DaemonError(message: "no pid for \(name): \(info)")
        }
        return try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task").compactMap { Int32($0) }
    }

    /// A thread's scheduling policy (SCHED_*), or -1 if it has ended.
    static func policy(of thread: Int32) -> Int32 {
        var policy: Int32 = -1
        var priority: Int32 = 0
        return tern_thread_policy(thread, &policy, &priority) == 0 ? policy : -1
    }

    /// Returns what `tern migrate` said.
    @discardableResult
    func expectStillOnSource(_ name: String, _ a: TestDaemon, _ b: TestDaemon, _ process: Process, _ pipe: Pipe) throws -> String {
        process.waitUntilExit()
        let err = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus != 0)
        #expect(err.contains("failed during the transfer") && err.contains("the VM is running on the source"), "\(err)")
        #expect(try state(name, on: a) == "running")
        let last = a.lastCounter(name)
        #expect(a.waitForConsole(name, "TERN-GUEST: counter \(last + 3)"), "the VM stopped counting on the source")
        let all = Self.counters(a.consoleLog(name))
        #expect(all == Array(1...all.count), "the counter skipped or reset: \(all.suffix(20))")
        var gone = false
        for _ in 0..<50 where !gone {
            gone = try state(name, on: b) == nil
            Thread.sleep(forTimeInterval: 0.1)
        }
        #expect(gone, "the destination kept the half-received VM")
        #expect(try b.tern("list").status == 0, "the destination daemon died")
        // And it can still move once the trouble is gone.
        let again = try migrate(name, from: a, to: b)
        #expect(again.status == 0, "\(again.err)")
        return err
    }

    @Test func killingTheDestinationDuringTheTransferLeavesTheVMOnItsSource() throws {
        try withTwoDaemons(nil, nil) { a, b in
            try boot("survivor", on: a)
            let (process, pipe, pid) = try startSlowMigration("survivor", from: a, to: b)
            // Memory is being sent with the guest running: its vCPU thread yields to the migration
            // (where the daemon could give the policy back), and gets its policy back after.
            let source = try qemuThreads(of: "survivor", on: a)
            let mayYield = tern_may_leave_idle_policy() != 0
            #expect(source.contains { Self.policy(of: $0) == tern_idle_policy() } == mayYield, "\(source.map(Self.policy))")
            kill(pid, SIGKILL)
            try expectStillOnSource("survivor", a, b, process, pipe)
            #expect(!source.contains { Self.policy(of: $0) == tern_idle_policy() }, "a vCPU still yields after the move failed")
        }
    }

    /// `tern destroy` on the destination, on a VM still receiving its state (as for one whose
    /// source has gone): discarded there, and the move fails with the VM on its source.
    @Test func destroyingAnIncomingVMLeavesTheVMOnItsSource() throws {
        try withTwoDaemons(nil, nil) { a, b in
            try boot("unwanted", on: a)
            let (process, pipe, _) = try startSlowMigration("unwanted", from: a, to: b)
            let destroy = try b.tern("destroy", "unwanted")
            #expect(destroy.status == 0, "\(destroy.err)")
            try expectStillOnSource("unwanted", a, b, process, pipe)
        }
    }

    /// A destination prepared for a VM whose stream never comes (its source died after asking)
    /// discards it after its `--peer-timeout`, rather than holding it for a day; and a shut-off
    /// VM that an incoming one was to replace survives a restart of the daemon meanwhile.
    @Test func anIncomingVMThatNeverArrivesLeavesNothingBehind() async throws {
        let a = try TestDaemon()
        defer { a.tearDown() }
        let b = try TestDaemon(extraArguments: ["--peer-timeout", "2"])
        defer { b.tearDown() }
        try boot("orphan", on: a)
        // What a source sends when it prepares a move: the VM as its save file records it.
        let file = a.stateDirectory.appendingPathComponent("orphan.ternsave").path
        #expect(try a.tern("save", "orphan", file).status == 0)
        let transfer = try JSONDecoder().decode(VMTransfer.self, from: try SaveFileReader(path: file).metadata)
        let destination = APIClient(endpoint: .unixSocket(b.socket))
        let _: IncomingMigrationReply = try await destination.post(
            "/migrations/incoming", body: IncomingMigrationRequest(vm: transfer, parameters: MigrationParameters(), timeoutSeconds: nil))
        #expect(try state("orphan", on: b) == "incoming")
        var gone = false
        for _ in 0..<100 where !gone {
            try await Task.sleep(for: .milliseconds(100))
            gone = try state("orphan", on: b) == nil
        }
        #expect(gone, "the destination still holds the VM whose stream never came")
        #expect(try b.tern("list").status == 0)

        // Received in place of a shut-off VM of that name, and the daemon restarted meanwhile:
        // the shut-off VM's definition comes back, not the one that was arriving.
        _ = try b.tern("define", "-", stdin: TestDaemon.domainXML(name: "orphan", memoryMiB: 160))
        let _: IncomingMigrationReply = try await destination.post(
            "/migrations/incoming", body: IncomingMigrationRequest(vm: transfer, parameters: MigrationParameters(), timeoutSeconds: nil))
        #expect(try state("orphan", on: b) == "incoming")
        b.kill()
        try b.start()
        let info = try b.tern("dominfo", "orphan").out
        #expect(try state("orphan", on: b) == "shutoff", "\(info)")
        #expect(info.contains("163840 KiB"), "the shut-off definition was not put back: \(info)")
    }

    /// A move that runs past `--timeout` gives up, with the VM on its source.
    @Test func aMovePastItsTimeoutLeavesTheVMOnItsSource() throws {
        try withTwoDaemons(nil, nil) { a, b in
            try boot("patient", on: a)
            let (process, pipe, _) = try startSlowMigration("patient", from: a, to: b, ["--timeout", "2"])
            let err = try expectStillOnSource("patient", a, b, process, pipe)
            #expect(err.contains("--timeout 2 s"), "\(err)")
        }
    }

    @Test func cuttingTheConnectionDuringTheTransferLeavesTheVMOnItsSource() throws {
        try withTCPDestination { a, b, endpoint in
            try boot("cut", on: a)
            let (process, pipe, pid) = try startSlowMigration("cut", from: a, to: b, endpoint: endpoint)
            // The port the receiving QEMU listens on, then every connection to or from it, killed.
            let cut = try cutConnections(to: try listeningPort(of: pid))
            #expect(cut.status == 0, "\(cut.err)")
            try expectStillOnSource("cut", a, b, process, pipe)
        }
    }

    /// A post-copy stream cut off while the guest already runs on the destination (its memory
    /// partly still on the source): the destination listens again, the source sends the rest,
    /// and the VM arrives whole; the report says the stream was resumed.
    @Test func aPostcopyStreamCutOffIsResumedAndTheVMArrives() throws {
        try withTCPDestination { a, b, endpoint in
            // Much memory rewritten, so that much of it is still to come once the guest runs there.
            try boot("resumable", on: a, mode: "memtouch tern.dirty_mb=128", memoryMiB: 320)
            let reportFile = a.stateDirectory.appendingPathComponent("report.txt")
            _ = FileManager.default.createFile(atPath: reportFile.path, contents: nil)
            let report = try FileHandle(forWritingTo: reportFile)
            let (process, pipe, pid) = try startSlowMigration(
                "resumable", from: a, to: b, endpoint: endpoint, report: report, ["--postcopy"])
            let port = try listeningPort(of: pid)
            var postcopy = false
            for _ in 0..<600 where !postcopy {
                Thread.sleep(forTimeInterval: 0.1)
                postcopy = try a.tern("domjobinfo", "resumable").out.contains("Job status:         postcopy")
            }
            try #require(postcopy, "the move never switched to post-copy")
            Thread.sleep(forTimeInterval: 0.3)
            let cut = try cutConnections(to: port)
            #expect(cut.status == 0 && cut.out.contains("ESTAB"), "nothing cut: \(cut.out) \(cut.err)")
            process.waitUntilExit()
            let err = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(process.terminationStatus == 0, "\(err)")
            let said = try String(contentsOf: reportFile, encoding: .utf8)
            #expect(said.contains("the post-copy stream broke off once and was resumed"), "\(said)")
            #expect(try state("resumable", on: b) == "running")
            #expect(try state("resumable", on: a) == nil)
            try expectContinuity("resumable", from: a, to: b)
        }
    }

    /// A post-copy move whose destination dies after the switch: the copy left on the source is
    /// out of date (the guest ran on the destination), stays paused, and is never resumed.
    @Test func aSourceCopyOutdatedByPostcopyIsNeverResumed() throws {
        let a = try TestDaemon(extraArguments: ["--peer-timeout", "2"])
        defer { a.tearDown() }
        let b = try TestDaemon()
        defer { b.tearDown() }
        try boot("outdated", on: a, mode: "memtouch tern.dirty_mb=128", memoryMiB: 320)
        let (process, pipe, pid) = try startSlowMigration("outdated", from: a, to: b, ["--postcopy"])
        var postcopy = false
        for _ in 0..<600 where !postcopy {
            Thread.sleep(forTimeInterval: 0.1)
            postcopy = try a.tern("domjobinfo", "outdated").out.contains("Job status:         postcopy")
        }
        try #require(postcopy, "the move never switched to post-copy")
        kill(pid, SIGKILL)
        process.waitUntilExit()
        let err = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus != 0 && err.contains("post-copy"), "\(err)")
        #expect(try state("outdated", on: a) == "paused")
        let resume = try a.tern("resume", "outdated")
        #expect(resume.status != 0 && resume.err.contains("out of date"), "\(resume.err)")
        #expect(try state("outdated", on: a) == "paused")
    }

    /// A destination reached through its Unix socket whose own files the source cannot see (here:
    /// the source daemon runs in a mount namespace where the destination's VM directories are an
    /// empty tmpfs) gets the stream over TCP; and a destination named by a TCP endpoint always does.
    @Test func aStreamSocketTheSourceCannotReachFallsBackToTCP() throws {
        let b = try TestDaemon()
        defer { b.tearDown() }
        let hidden = b.stateDirectory.appendingPathComponent("vms")
        try FileManager.default.createDirectory(at: hidden, withIntermediateDirectories: true)
        let port = try freeTCPPort()
        let a = try TestDaemon(
            extraArguments: ["--listen", "127.0.0.1:\(port)"],
            launcher: ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                       "mount -t tmpfs tmpfs \"$0\" && exec \"$@\"", hidden.path])
        defer { a.tearDown() }
        try boot("elsewhere", on: a)
        let there = try migrate("elsewhere", from: a, to: b)
        #expect(there.status == 0, "\(there.err)")
        #expect(there.out.contains("stream       tcp 127.0.0.1:"), "\(there.out)")
        #expect(try state("elsewhere", on: b) == "running")
        try expectContinuity("elsewhere", from: a, to: b)
        let firstLeg = a.consoleLog("elsewhere")
        let back = try b.tern("migrate", "elsewhere", "--to", "tcp://127.0.0.1:\(port)")
        #expect(back.status == 0, "\(back.err)")
        #expect(back.out.contains("stream       tcp 127.0.0.1:"), "\(back.out)")
        #expect(try state("elsewhere", on: a) == "running")
        try expectContinuity("elsewhere", from: b, to: a, sourceLog: firstLeg + b.consoleLog("elsewhere"))
    }

    @Test func domjobabortStopsAMoveAndTheVMStaysOnItsSource() throws {
        try withTwoDaemons(nil, nil) { a, b in
            try boot("quitter", on: a)
            let idle = try a.tern("domjobabort", "quitter")
            #expect(idle.status != 0 && idle.err.contains("no save or migration stream underway"), "\(idle.err)")
            let (process, pipe, _) = try startSlowMigration("quitter", from: a, to: b)
            let job = try a.tern("domjobinfo", "quitter")
            #expect(job.out.contains("Job status:") && job.out.contains("active"), "\(job.out)")
            let abort = try a.tern("domjobabort", "quitter")
            #expect(abort.status == 0, "\(abort.err)")
            let said = try expectStillOnSource("quitter", a, b, process, pipe)
            #expect(said.contains("aborted on request"), "\(said)")
        }
    }

    @Test func ctrlCOnMigrateAbortsTheMove() throws {
        try withTwoDaemons(nil, nil) { a, b in
            try boot("interrupted", on: a)
            let (process, pipe, _) = try startSlowMigration("interrupted", from: a, to: b)
            kill(process.processIdentifier, SIGINT)
            let said = try expectStillOnSource("interrupted", a, b, process, pipe)
            #expect(said.contains("aborting the job of 'interrupted'") && said.contains("aborted on request"), "\(said)")
        }
    }

    /// The destination's daemon stops answering (stopped, as a host that hangs or a link left
    /// half-open) after it was told to resume the guest: whether it runs the VM cannot be learned,
    /// so the source keeps its copy paused and says so. Once the destination answers again it acts
    /// on what it was asked meanwhile, in whatever order it takes the requests: it runs the VM (the
    /// word to resume first) or discards its copy (the abort first). Either way one copy runs at
    /// most, and the VM counts on where it is.
    @Test func aDestinationThatStopsAnsweringNeverLeavesTwoRunningCopies() throws {
        try withMoveLeftInDoubt("stranded") { a, b, last in
            kill(try #require(b.pid), SIGCONT)
            var there = try state("stranded", on: b)
            for _ in 0..<100 where there == "incoming" {
                Thread.sleep(forTimeInterval: 0.1)
                there = try state("stranded", on: b)
            }
            #expect(try state("stranded", on: a) == "paused", "the source resumed on its own")
            if there == "running" {
                #expect(b.waitForConsole("stranded", "TERN-GUEST: counter \(last + 3)"), "the VM does not count on the destination")
                #expect(a.lastCounter("stranded") == last, "the paused source copy ran")
            } else {
                #expect(there == nil, "the destination neither runs nor dropped its copy: \(String(describing: there))")
                #expect(!b.consoleLog("stranded").contains("TERN-GUEST: counter"), "the dropped copy ran")
                #expect(try a.tern("resume", "stranded").status == 0)
                #expect(a.waitForConsole("stranded", "TERN-GUEST: counter \(last + 3)"), "the VM does not count on the source")
            }
        }
    }

    /// Two daemons (the source with a short `--peer-timeout`) and a VM `name` moved non-live
    /// between them, whose destination daemon is stopped (SIGSTOP: as a host that hangs, or a link
    /// left half-open; its QEMU receives the rest of the stream) until the source gives up on it.
    /// The source must then keep the VM paused, unable to learn where it runs, and say so. Runs
    /// `body` with both daemons (the destination still stopped) and the last counter printed.
    func withMoveLeftInDoubt(_ name: String, _ body: (TestDaemon, TestDaemon, Int) throws -> Void) throws {
        let a = try TestDaemon(extraArguments: ["--peer-timeout", "3"])
        defer { a.tearDown() }
        let b = try TestDaemon()
        defer { b.tearDown() }
        try boot(name, on: a)
        // Non-live: the whole state is sent whatever the guest does, and then the word to resume.
        let (process, pipe, _) = try startSlowMigration(name, from: a, to: b, ["--no-live"])
        kill(try #require(b.pid), SIGSTOP)
        process.waitUntilExit()
        let err = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus != 0)
        #expect(err.contains("could not be learned") && err.contains("'tern resume \(name)' here"), "\(err)")
        #expect(try state(name, on: a) == "paused")
        #expect(try a.tern("dominfo", name).out.contains("whether it runs there is not known"))
        try body(a, b, a.lastCounter(name))
    }

    /// The destination's daemon dies just after it let the received guest run, before it could
    /// confirm: the source cannot learn where the VM runs and keeps it paused, and the restarted
    /// destination keeps the running guest instead of ending it. One copy runs, and counts on.
    @Test func aDestinationDaemonThatDiesAfterResumingKeepsTheVMItRuns() throws {
        try withMoveLeftInDoubt("resumed") { a, b, last in
            b.kill()
            // What the daemon did just before it died: the state is in, and the guest runs.
            let control = b.stateDirectory.appendingPathComponent("vms/resumed/control.sock").path
            let replies = try Self.qmp(control, ["qmp_capabilities", "cont"])
            #expect(replies.allSatisfy { $0.contains("\"return\"") }, "\(replies)")
            try b.start()
            #expect(try state("resumed", on: b) == "running")
            #expect(try b.tern("dominfo", "resumed").out.contains("it was running when this daemon restarted"))
            #expect(b.waitForConsole("resumed", "TERN-GUEST: counter \(last + 3)"), "the VM does not count on the destination")
            #expect(a.lastCounter("resumed") == last, "the paused source copy ran")
        }
    }

    /// The source's daemon dies during a move and its QEMU sends the rest on its own. Restarted, the
    /// daemon asks the destination where the VM is: never told to resume, the destination discards
    /// its copy, and the VM runs on here, its counter intact.
    @Test func aSourceDaemonRestartedMidMoveRunsTheVMAgainWhenTheDestinationNeverDid() throws {
        try withTwoDaemons(nil, nil) { a, b in
            try moveAndKillTheSourceDaemon("departed", from: a, to: b)
            try waitUntilSent("departed", from: a)
            let last = a.lastCounter("departed")
            try a.start()
            #expect(try waitForState("departed", on: a, "running"), "the VM did not run again on the source")
            #expect(try a.tern("dominfo", "departed").out.contains("did not have it, so it is running here"))
            #expect(a.waitForConsole("departed", "TERN-GUEST: counter \(last + 3)"))
            #expect(Self.counters(a.consoleLog("departed")) == Array(1...a.lastCounter("departed")), "the counter skipped or reset")
            #expect(try state("departed", on: b) == nil, "the destination kept its copy")
            #expect(!b.consoleLog("departed").contains("TERN-GUEST: counter"), "the destination ran it")
        }
    }

    /// The same, but the destination had been told to resume (the word got through before the
    /// source's daemon died): restarted, the source learns the VM runs there and ends its own copy.
    @Test func aSourceDaemonRestartedMidMoveLetsGoOfAVMThatArrived() throws {
        try withTwoDaemons(nil, nil) { a, b in
            try moveAndKillTheSourceDaemon("arrived", from: a, to: b)
            let last = a.lastCounter("arrived")
            // What the source's daemon would have sent: the destination resumes the guest once the
            // rest of the state (which the source QEMU sends on its own) is in.
            let finished = Answer()
            let done = DispatchSemaphore(value: 0)
            Task {
                finished.info = try? await APIClient(endpoint: .unixSocket(b.socket), timeout: .seconds(120))
                    .post("/migrations/incoming/arrived/finish", as: IncomingMigrationFinish.self).vm
                done.signal()
            }
            done.wait()
            #expect(finished.info?.state == "running", "\(String(describing: finished.info))")
            try a.start()
            #expect(try waitForState("arrived", on: a, nil), "the source kept its copy")
            #expect(try state("arrived", on: b) == "running")
            #expect(b.waitForConsole("arrived", "TERN-GUEST: counter \(last + 3)"), "the VM does not count on the destination")
        }
    }

    /// And when the destination's daemon is gone too, nobody can say whether the VM runs there:
    /// it stays paused on the source, with the reason, until the user decides.
    @Test func aSourceDaemonRestartedMidMoveKeepsTheVMPausedWhenTheDestinationCannotSay() throws {
        try withTwoDaemons(nil, nil) { a, b in
            try moveAndKillTheSourceDaemon("unsure", from: a, to: b)
            b.kill()
            try waitUntilSent("unsure", from: a)
            try a.start()
            #expect(try waitForState("unsure", on: a, "paused"))
            for _ in 0..<100 where try !a.tern("dominfo", "unsure").out.contains("could not be learned") {
                Thread.sleep(forTimeInterval: 0.1)
            }
            #expect(try a.tern("dominfo", "unsure").out.contains("whether it runs there could not be learned"))
            // Its daemon back, the destination ends the copy it was never told to run; the user
            // then resumes the VM here.
            try b.start()
            #expect(try state("unsure", on: b) == nil)
            let last = a.lastCounter("unsure")
            #expect(try a.tern("resume", "unsure").status == 0)
            #expect(a.waitForConsole("unsure", "TERN-GUEST: counter \(last + 3)"))
        }
    }

    /// Boots `name` on `a`, starts a slow non-live move to `b`, and kills `a`'s daemon meanwhile
    /// (its QEMU goes on sending); returns once `tern migrate` has given up.
    func moveAndKillTheSourceDaemon(_ name: String, from a: TestDaemon, to b: TestDaemon) throws {
        try boot(name, on: a)
        let (process, _, _) = try startSlowMigration(name, from: a, to: b, ["--no-live"])
        a.kill()
        process.waitUntilExit()
    }

    /// Waits until the source QEMU of a move whose daemon died has sent all of the state.
    func waitUntilSent(_ name: String, from daemon: TestDaemon) throws {
        let control = daemon.stateDirectory.appendingPathComponent("vms/\(name)/control.sock").path
        var sent = false
        for _ in 0..<240 where !sent {
            Thread.sleep(forTimeInterval: 0.5)
            sent = try Self.qmp(control, ["qmp_capabilities", "query-migrate"]).last?.contains("\"completed\"") == true
        }
        #expect(sent, "the source QEMU never finished sending")
    }

    /// Waits (up to 60 s) until the VM's state is `wanted` (nil: not defined there).
    func waitForState(_ name: String, on daemon: TestDaemon, _ wanted: String?) throws -> Bool {
        for _ in 0..<600 {
            if try state(name, on: daemon) == wanted { return true }
            Thread.sleep(forTimeInterval: 0.1)
        }
        return false
    }

    /// Sends QMP commands (no arguments) over a QEMU control socket; returns each reply line.
    static func qmp(_ socketPath: String, _ commands: [String]) throws -> [String] {
        let fd = tern_unix_connect(socketPath)
        guard fd >= 0 else { throw DaemonError(message: "cannot connect to \(socketPath)") }
        defer { close(fd) }
        let input = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
        var pending = Data()
        func line() -> String {
            while !pending.contains(UInt8(ascii: "\n")) {
                let chunk = input.availableData
                if chunk.isEmpty { break }
                pending += chunk
            }
            let end = pending.firstIndex(of: UInt8(ascii: "\n")) ?? pending.endIndex
            defer { pending = pending[min(end + 1, pending.endIndex)...] }
            return String(decoding: pending[..<end], as: UTF8.self)
        }
        _ = line()  // the greeting
        return commands.map { command in
            input.write(Data("{\"execute\":\"\(command)\"}\n".utf8))
            var reply = line()
            while reply.contains("\"event\"") { reply = line() }
            return reply
        }
    }

    @Test func aVanishedDestinationDaemonNeverLeavesTwoRunningCopies() throws {
        try withTwoDaemons(nil, nil) { a, b in
            try boot("orphan", on: a)
            let (process, pipe, qemu) = try startSlowMigration("orphan", from: a, to: b)
            b.kill()  // the daemon, not its QEMU: the stream goes on, nobody can confirm
            process.waitUntilExit()
            let err = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(process.terminationStatus != 0)
            #expect(err.contains("the VM is running on the source"), "\(err)")
            #expect(try state("orphan", on: a) == "running")
            let last = a.lastCounter("orphan")
            #expect(a.waitForConsole("orphan", "TERN-GUEST: counter \(last + 3)"))
            // The received copy never ran (it would have printed its counter there) ...
            let received = b.consoleLog("orphan")
            #expect(!received.contains("TERN-GUEST: counter"), "the received copy ran: \(received.suffix(300))")
            // ... and the restarted daemon ends it and forgets it.
            try b.start()
            #expect(try state("orphan", on: b) == nil)
            #expect(kill(qemu, 0) != 0 || (try? String(contentsOfFile: "/proc/\(qemu)/stat", encoding: .utf8))?.contains(") Z") == true)
        }
    }

    /// The whole state arrives, but the daemon that would confirm it is gone: the source keeps
    /// the VM running, and the received copy, never told to run, never does.
    @Test(arguments: [["--no-live"], []])
    func aDestinationDaemonGoneBeforeConfirmingNeverLeavesTwoRunningCopies(options: [String]) throws {
        try withTwoDaemons(nil, nil) { a, b in
            try boot("unconfirmed", on: a)
            // Non-live, or live under TCG (two passes): the whole state is sent however slowly it goes.
            let (process, pipe, qemu) = try startSlowMigration("unconfirmed", from: a, to: b, options)
            b.kill()  // the daemon, not its QEMU, which receives the rest of the stream
            process.waitUntilExit()
            let err = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(process.terminationStatus != 0)
            #expect(err.contains("during confirmation") && err.contains("the VM is running on the source"), "\(err)")
            #expect(try state("unconfirmed", on: a) == "running")
            let last = a.lastCounter("unconfirmed")
            #expect(a.waitForConsole("unconfirmed", "TERN-GUEST: counter \(last + 3)"))
            #expect(!b.consoleLog("unconfirmed").contains("TERN-GUEST: counter"), "the received copy ran")
            try b.start()
            #expect(try state("unconfirmed", on: b) == nil)
            #expect(kill(qemu, 0) != 0 || (try? String(contentsOfFile: "/proc/\(qemu)/stat", encoding: .utf8))?.contains(") Z") == true)
        }
    }

    // MARK: - Bad save files

    @Test func badSaveFilesAreRefusedAndNothingStarts() throws {
        let a = try TestDaemon()
        defer { a.tearDown() }
        try boot("source", on: a)
        let good = a.stateDirectory.appendingPathComponent("good.ternsave").path
        #expect(try a.tern("save", "source", good).status == 0)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: good))
        func restore(_ data: Data, _ label: String) throws -> ProgramRun {
            let path = a.stateDirectory.appendingPathComponent("\(label).ternsave").path
            try data.write(to: URL(fileURLWithPath: path))
            return try a.tern("restore", path, "--name", label)
        }
        let truncated = try restore(bytes.prefix(bytes.count / 2), "truncated")
        #expect(truncated.status != 0)
        #expect(truncated.err.contains("is truncated"), "\(truncated.err)")
        var flipped = bytes
        flipped[4096 + (bytes.count - 4096) / 2] ^= 0x5A  // inside the state stream (guest memory)
        let corrupt = try restore(flipped, "corrupt")
        #expect(corrupt.status != 0)
        #expect(corrupt.err.contains("state stream checksum mismatch"), "\(corrupt.err)")
        var header = bytes
        header[30] ^= 0x01
        let badHeader = try restore(header, "badheader")
        #expect(badHeader.status != 0)
        #expect(badHeader.err.contains("header checksum mismatch"), "\(badHeader.err)")
        let foreign = try restore(Data("QEVM\u{0}\u{0}\u{0}\u{3}not ours".utf8) + bytes.suffix(1000), "foreign")
        #expect(foreign.status != 0)
        #expect(foreign.err.contains("is not a Tern save file"), "\(foreign.err)")
        let missing = try a.tern("restore", "/nonexistent/file.ternsave")
        #expect(missing.status != 0 && missing.err.contains("cannot open save file"), "\(missing.err)")
        for label in ["truncated", "corrupt", "badheader", "foreign"] {
            #expect(try state(label, on: a) == nil, "\(label) left a VM behind")
        }
        // The daemon and the good file are fine.
        let restored = try a.tern("restore", good)
        #expect(restored.status == 0, "\(restored.err)")
        #expect(try state("source", on: a) == "running")
    }
}
