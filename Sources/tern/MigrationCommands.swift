import ArgumentParser
import Foundation
import TernAPI
import TernHypervisor

/// A path as the daemon should see it: absolute, from the caller's working directory.
func absolutePath(_ path: String) -> String {
    path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}

func mebibytes(_ bytes: Int) -> String { String(format: "%.1f MiB", Double(bytes) / 1_048_576) }

/// While `body` runs, Ctrl-C asks the daemon to abort the VM's save or migration (as `virsh`
/// does) instead of ending this command: the daemon then reports how the move ended.
func abortingOnInterrupt<T: Sendable>(
    _ name: String, _ client: APIClient, _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    signal(SIGINT, SIG_IGN)
    let interrupt = DispatchSource.makeSignalSource(signal: SIGINT)
    interrupt.setEventHandler {
        Task {
            do {
                _ = try await client.post(path(name, "migration/abort"), as: MigrationProgress.self)
                FileHandle.standardError.write(Data("tern: aborting the job of '\(name)' (the VM stays on this host)\n".utf8))
            } catch {
                // Past the point of no return (post-copy, a quick migration's restore): it goes on.
                FileHandle.standardError.write(Data("tern: the job of '\(name)' cannot be aborted now: \(error)\n".utf8))
            }
        }
    }
    interrupt.resume()
    defer {
        interrupt.cancel()
        signal(SIGINT, SIG_DFL)
    }
    return try await body()
}

struct Save: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "save",
        abstract: "Save a running VM's state to a file and stop it (like 'virsh save').",
        discussion: "The file is written by the daemon, on its host. Restore it there or on any host whose CPU can take the VM.")
    @Argument(help: "The VM's name.") var name: String
    @Argument(help: ArgumentHelp("The save file to write.", valueName: "file")) var file: String
    @OptionGroup var connection: ConnectOptions

    func run() async throws {
        let client = try connection.client()
        let (name, file) = (name, file)
        let report: SaveReport = try await abortingOnInterrupt(name, client) {
            try await client.post(path(name, "save"), body: SaveRequest(path: absolutePath(file)))
        }
        print("Domain '\(report.vm.name)' saved to \(report.path) (\(mebibytes(report.bytes)) in \(report.durationMs) ms)")
    }
}

struct Restore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a VM from a save file (like 'virsh restore').",
        discussion: """
            The file is checked first (format, size, checksums), then the processor compatibility check: \
            the features the VM has must all be offered by this host, or nothing is started.
            """)
    @Argument(help: ArgumentHelp("The save file.", valueName: "file")) var file: String
    @Option(help: "Restore under this name instead of the saved one.") var name: String?
    @Flag(help: "Keep the vCPUs paused after restoring.") var paused = false
    @OptionGroup var connection: ConnectOptions

    func run() async throws {
        let report: RestoreReport = try await connection.client().post(
            "/restore", body: RestoreRequest(path: absolutePath(file), name: name, paused: paused ? true : nil))
        print(
            "Domain '\(report.vm.name)' restored from \(file) (saved on \(report.source.hostname), "
                + "\(report.source.cpuSource)) in \(report.durationMs) ms; it is \(report.vm.state)")
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Move a running VM to another ternd, live (like 'virsh migrate --live').",
        discussion: """
            The destination first runs the processor compatibility check (the features the VM has now \
            against what it can offer) and prepares; only then does the state move. Until the destination \
            confirms the VM runs there, the VM stays here: if anything fails it keeps running on this host. \
            Ctrl-C (or 'tern domjobabort') aborts the move, up to the switch to post-copy.

            Under TCG, QEMU's dirty-page tracking misses guest writes once a live migration makes more \
            than 3 passes over memory. Such a move is not committed: the guest runs on here and is moved \
            again with it paused for the transfer (the report says so).
            """)
    @Argument(help: "The VM's name.") var name: String
    @Option(help: ArgumentHelp("The destination ternd: its socket path or tcp://host:port.", valueName: "uri")) var to: String
    @Flag(help: "Show progress while migrating.") var verbose = false
    @Option(name: .customLong("max-downtime"), help: ArgumentHelp("Longest pause allowed at the end.", valueName: "ms"))
    var maxDowntime: Int?
    @Option(help: ArgumentHelp("Bandwidth cap (default: none).", valueName: "MiB/s")) var bandwidth: Int?
    @Option(help: ArgumentHelp("Parallel connections for the stream (default: 1). Faster, but with QEMU 7.2 a VM whose migration over several connections failed cannot be moved or saved again until it restarts.", valueName: "n"))
    var connections: Int?
    @Flag(name: .customLong("auto-converge"), help: "Slow the guest down if it dirties memory faster than it can be sent.")
    var autoConverge = false
    @Flag(help: "Switch to post-copy after the first pass (under TCG: during it; the guest runs on the destination sooner).")
    var postcopy = false
    @Flag(
        inversion: .prefixedNo,
        help: "Keep the guest running during the transfer (--no-live: pause it until it resumes on the destination).")
    var live = true
    @Flag(
        name: .customLong("yield"), inversion: .prefixedNo,
        help: "While memory is sent with the guest running, its vCPUs use only processor time nothing else on this host wants, for up to 3 s (--no-yield: their usual priority).")
    var guestYields = true
    @Option(help: ArgumentHelp("Give up after this long (the VM stays here).", valueName: "s")) var timeout: Int?
    @Option(
        help: ArgumentHelp(
            "Quick migration: save here, restore there, through this directory (both hosts must see it).", valueName: "dir"))
    var quick: String?
    @OptionGroup var connection: ConnectOptions

    var parameters: MigrationParameters {
        MigrationParameters(
            maxDowntimeMs: maxDowntime, bandwidthMiBps: bandwidth, connections: connections, autoConverge: autoConverge,
            postcopy: postcopy, live: live, guestYields: guestYields)
    }

    func validate() throws {
        if let problem = parameters.problem(timeoutSeconds: timeout) { throw ValidationError(problem) }
        if quick != nil, postcopy || autoConverge || maxDowntime != nil || bandwidth != nil || connections != nil || timeout != nil {
            throw ValidationError(
                "--quick saves the VM to a file and restores it there: --postcopy, --auto-converge, --max-downtime, --bandwidth, --connections and --timeout do not apply")
        }
        if !live, postcopy || autoConverge || maxDowntime != nil || quick != nil {
            throw ValidationError(
                "--no-live pauses the guest for the whole transfer: --postcopy, --auto-converge, --max-downtime and --quick do not apply")
        }
    }

    func run() async throws {
        let client = try connection.client()
        // A socket path is the daemon's to open: relative to where this command runs, made whole.
        var destination = to
        if case .unixSocket(let socket) = try APIClient.Endpoint(to) { destination = absolutePath(socket) }
        let request = MigrateRequest(
            destination: destination, parameters: parameters,
            timeoutSeconds: timeout, quickDirectory: quick.map(absolutePath))
        let name = name
        let migration = Task { () throws -> MigrationReport in
            try await abortingOnInterrupt(name, client) { try await client.post(path(name, "migrate"), body: request) }
        }
        if verbose {
            let progress = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(500))
                    guard let p: MigrationProgress = try? await client.get(path(name, "migration")), !p.isFinished,
                        p.status != .none
                    else { continue }
                    FileHandle.standardError.write(Data((Self.line(p) + "\n").utf8))
                }
            }
            defer { progress.cancel() }
            _ = try? await migration.value
        }
        let report = try await migration.value
        if verbose { FileHandle.standardError.write(Data("Migration: [100 %]\n".utf8)) }
        print("Domain '\(report.vm.name)' migrated to \(report.destination) (\(report.kind)); it is \(report.vm.state) there")
        print("  total time   \(report.totalMs) ms")
        print("  prepare      \(report.prepareMs) ms (destination: compatibility check, receiving VM started)")
        print("  transfer     \(report.transferMs) ms")
        print("  confirm      \(report.confirmMs) ms")
        print("  downtime     \(report.downtimeMs) ms" + (report.setupPauseMs.map { " (\($0) ms of it while the stream started)" } ?? ""))
        print(
            "  transferred  \(mebibytes(report.bytes)) in \(report.rounds) round\(report.rounds == 1 ? "" : "s") "
                + String(format: "(%.1f MiB/s)", report.throughputMiBps))
        if let stream = report.stream { print("  stream       \(stream)") }
        if let note = report.note { print("  note         \(note)") }
    }

    /// One progress line, as `virsh migrate --verbose` shows it, with the figures behind it.
    static func line(_ p: MigrationProgress) -> String {
        var text = String(format: "Migration: [%3d %%]", p.percent)
        text += "  \(mebibytes(p.transferredBytes)) sent, \(mebibytes(p.remainingBytes)) left"
        text += String(format: ", %.1f MiB/s", p.rateBytesPerSecond / 1_048_576)
        text += String(format: ", dirtying %.1f MiB/s", p.dirtyBytesPerSecond / 1_048_576)
        if let expected = p.expectedDowntimeMs { text += ", expected downtime \(expected) ms" }
        text += ", round \(p.rounds)"
        if p.status == .postcopy { text += " (post-copy)" }
        if p.status == .postcopyPaused { text += " (post-copy, the stream broke off: resuming it)" }
        return text
    }
}

struct DomJobInfo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "domjobinfo", abstract: "Show a VM's current or last save or migration (like 'virsh domjobinfo').")
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var connection: ConnectOptions
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let job: MigrationProgress = try await connection.client().get(path(name, "migration"))
        if json { return try printJSON(job) }
        func row(_ key: String, _ value: String) { print((key + ":").padding(toLength: 20, withPad: " ", startingAt: 0) + value) }
        row("Job status", job.status.rawValue)
        guard job.status != .none else { return }
        if let error = job.error { row("Error", error) }
        row("Time elapsed", "\(job.elapsedMs) ms")
        row("Memory processed", mebibytes(job.transferredBytes))
        row("Memory remaining", mebibytes(job.remainingBytes))
        row("Memory total", mebibytes(job.memoryBytes))
        row("Rate", String(format: "%.1f MiB/s", job.rateBytesPerSecond / 1_048_576))
        row("Dirty rate", String(format: "%.1f MiB/s", job.dirtyBytesPerSecond / 1_048_576))
        row("Iteration", "\(job.rounds)")
        if let expected = job.expectedDowntimeMs { row("Expected downtime", "\(expected) ms") }
        if let downtime = job.downtimeMs { row("Total downtime", "\(downtime) ms") }
    }
}

struct DomJobAbort: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "domjobabort",
        abstract: "Abort a VM's save or live migration (like 'virsh domjobabort'); the VM stays here as it was.",
        discussion: "Not once a migration has switched to post-copy: its guest runs on the destination then.")
    @Argument(help: "The VM's name.") var name: String
    @OptionGroup var connection: ConnectOptions

    func run() async throws {
        let _: MigrationProgress = try await connection.client().post(path(name, "migration/abort"))
        print("Job of domain '\(name)' is being aborted; it stays on this host")
    }
}
