import ArgumentParser
import Foundation
import Hummingbird
import Logging
import TernAPI
import TernCPU
import TernHost
import TernQEMU

#if canImport(Glibc)
import Glibc
#endif

/// `ternd`: one per host. Serves the HTTP/JSON API of `TernAPI` on a unix socket (and on TCP
/// when asked) in front of a ``VMHost``.
@main
struct Ternd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ternd", abstract: "Tern's host daemon: runs VMs on this host and serves Tern's API.",
        discussion: """
            Several daemons can run side by side on one machine, each with its own state \
            directory, socket, port and --host-cpu: a test cluster on one machine.
            """)

    @Option(help: ArgumentHelp("Where VM definitions, state and console logs live.", valueName: "dir"))
    var stateDir = "/var/lib/tern"
    @Option(help: ArgumentHelp("The API's unix socket (default: STATE-DIR/ternd.sock).", valueName: "path"))
    var socket: String?
    @Option(help: ArgumentHelp("Also serve the API on TCP, e.g. 127.0.0.1:7070.", valueName: "host:port"))
    var listen: String?
    @Option(
        name: .customLong("host-cpu"),
        help: ArgumentHelp(
            "Offer guests no more than this CPU: a <cpudata> dump, a <cpu> description or capabilities XML. "
                + "This is how a host stands in for an older or different processor.", valueName: "file"))
    var hostCPU: String?
    @Option(
        name: .customLong("migration-address"),
        help: ArgumentHelp(
            "Receive incoming migration streams on this address (default: the --listen host, else 127.0.0.1).",
            valueName: "host"))
    var migrationAddress: String?
    @Option(help: ArgumentHelp("Use a libvirt cpu_map directory instead of Tern's own CPU models.", valueName: "dir"))
    var cpuMap: String?
    @Option(
        name: .customLong("peer-timeout"),
        help: ArgumentHelp(
            "How long another ternd has to answer each step of a migration from here (default: 180). Past it, "
                + "whether it acted is not known: a VM it may already run stays paused here.", valueName: "s"))
    var peerTimeout: Int = 180

    func validate() throws {
        if peerTimeout < 1 { throw ValidationError("--peer-timeout must be at least 1 second") }
    }

    func run() async throws {
        var logger = Logger(label: "ternd")
        logger.logLevel = .info
        let stateDirectory = URL(fileURLWithPath: stateDir)
        try FileManager.default.createDirectory(at: stateDirectory, withIntermediateDirectories: true)
        // One daemon per state directory: a second one would take over the first one's socket.
        let lockPath = stateDirectory.appendingPathComponent("ternd.lock").path
        let lock = open(lockPath, O_CREAT | O_RDWR, 0o644)
        guard lock >= 0, flock(lock, LOCK_EX | LOCK_NB) == 0 else {
            throw ValidationError("another ternd is already using the state directory \(stateDir)")
        }
        let map = try cpuMap.map { try CPUMap.libvirt(directory: $0) } ?? CPUMap.builtin()
        let hypervisor = try await QEMUHypervisor.detect(map: map, cacheDirectory: stateDirectory.appendingPathComponent("cache"))
        var capabilities = try HostCapabilities.probe(
            map: map, hostCPUFile: hostCPU, accelerator: hypervisor.accelerator, acceleratorReason: hypervisor.acceleratorReason)
        capabilities.limit(hypervisorOffer: try await hypervisor.hostOffer())
        let host = try VMHost(hypervisor: hypervisor, capabilities: capabilities, stateDirectory: stateDirectory)
        await host.setMigrationHost(
            migrationAddress ?? listen.flatMap { $0.split(separator: ":").first.map(String.init) }.flatMap {
                $0 == "0.0.0.0" || $0 == "::" ? nil : $0
            } ?? "127.0.0.1")
        await host.setPeerTimeout(.seconds(peerTimeout))
        await host.recover()

        let socketPath = socket ?? stateDirectory.appendingPathComponent("ternd.sock").path
        try? FileManager.default.removeItem(atPath: socketPath)
        let router = APIRouter.make(host: host)
        var servers = [APIServer(router: router, address: .unixDomainSocket(path: socketPath), logger: logger)]
        if let listen {
            let parts = listen.split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]) else {
                throw ValidationError("--listen expects host:port, e.g. 127.0.0.1:7070")
            }
            servers.append(APIServer(router: router, address: .hostname(String(parts[0]), port: port), logger: logger))
        }
        logger.info(
            "ternd ready",
            metadata: [
                "socket": .string(socketPath), "tcp": .string(listen ?? "-"), "accelerator": .string(hypervisor.accelerator.rawValue),
                "host-cpu": .string(capabilities.host.source),
            ])
        // Serve until SIGTERM or SIGINT, then stop listening and let the requests in flight finish.
        let (signals, arrived) = AsyncStream.makeStream(of: Int32.self)
        let sources = [SIGTERM, SIGINT].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { arrived.yield(number) }
            source.resume()
            return source
        }
        defer { for source in sources { source.cancel() } }
        let running = servers
        let stopping = logger
        try await withThrowingTaskGroup(of: Void.self) { group in
            for server in running { group.addTask { try await server.run() } }
            group.addTask {
                for await number in signals {
                    stopping.info("stopping", metadata: ["signal": .stringConvertible(number)])
                    break
                }
                for server in running { try? await server.stop() }
            }
            try await group.waitForAll()
        }
        try? FileManager.default.removeItem(atPath: socketPath)
        close(lock)
    }
}
