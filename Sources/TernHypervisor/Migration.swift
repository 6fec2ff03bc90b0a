import Foundation

/// Moving a running VM's state out of its hypervisor (to another host or to a file) and in again.
///
/// The hypervisor streams the state; Tern decides where it goes, with what settings, and when
/// each side may commit. These are Tern's own words for it; the QEMU backend translates them to
/// QMP's `migrate`, `migrate-incoming` and `query-migrate`.

/// Where a migration stream goes (outgoing) or is received (incoming).
public enum MigrationAddress: Sendable, Equatable, Codable, CustomStringConvertible {
    /// TCP; an incoming VM given port 0 listens on a port of its choosing.
    case tcp(host: String, port: Int)
    /// A unix socket (save files and restores go through the daemon this way).
    case unixSocket(String)

    public var description: String {
        switch self {
        case let .tcp(host, port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case let .unixSocket(path): path
        }
    }

    /// The transport and where: `tcp HOST:PORT` or `unix PATH`.
    public var streamDescription: String {
        switch self {
        case .tcp: "tcp \(description)"
        case .unixSocket(let path): "unix \(path)"
        }
    }
}

/// How a migration runs.
public struct MigrationParameters: Sendable, Equatable, Codable {
    /// The longest the guest may be stopped at the end, in milliseconds: the hypervisor makes
    /// more passes while it expects a longer stop. Nil: the backend's default (QEMU's own under
    /// KVM; under TCG, one pass with the guest running and then the last, which keeps the copy
    /// exact — see ``Hypervisor/exactLiveMigrationPasses``).
    public var maxDowntimeMs: Int?
    /// The bandwidth cap in MiB/s (nil: no cap).
    public var bandwidthMiBps: Int?
    /// Parallel connections for the stream (1: a single connection; nil: ``automaticConnections``).
    public var connections: Int?
    /// Slow the guest's vCPUs down when it dirties memory faster than it can be sent.
    public var autoConverge: Bool
    /// Switch to post-copy (the guest runs on the destination while the rest of its memory
    /// follows on demand) after the first pass over memory (during it where the hypervisor's
    /// tracking is exact only up to a few passes).
    public var postcopy: Bool
    /// The guest runs during the transfer (libvirt's live migration). When false, it is paused
    /// from the start of the transfer until it resumes on the destination: a longer pause, but
    /// one pass over memory, and nothing the guest writes can be missed.
    public var live: Bool
    /// While memory is sent with the guest running, the guest's vCPUs run only on processor
    /// time nothing else on the host wants (they yield to the migration), up to a few seconds.
    /// On a host short of processors the move is shorter and less is left for the last pass;
    /// on one with processors to spare nothing changes for the guest.
    public var guestYields: Bool

    public init(
        maxDowntimeMs: Int? = nil, bandwidthMiBps: Int? = nil, connections: Int? = nil, autoConverge: Bool = false,
        postcopy: Bool = false, live: Bool = true, guestYields: Bool = true
    ) {
        self.maxDowntimeMs = maxDowntimeMs
        self.bandwidthMiBps = bandwidthMiBps
        self.connections = connections
        self.autoConverge = autoConverge
        self.postcopy = postcopy
        self.live = live
        self.guestYields = guestYields
    }

    private enum CodingKeys: String, CodingKey {
        case maxDowntimeMs, bandwidthMiBps, connections, autoConverge, postcopy, live, guestYields
    }

    /// Absent keys take their defaults, so a request from an older client still reads.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            maxDowntimeMs: try container.decodeIfPresent(Int.self, forKey: .maxDowntimeMs),
            bandwidthMiBps: try container.decodeIfPresent(Int.self, forKey: .bandwidthMiBps),
            connections: try container.decodeIfPresent(Int.self, forKey: .connections),
            autoConverge: try container.decodeIfPresent(Bool.self, forKey: .autoConverge) ?? false,
            postcopy: try container.decodeIfPresent(Bool.self, forKey: .postcopy) ?? false,
            live: try container.decodeIfPresent(Bool.self, forKey: .live) ?? true,
            guestYields: try container.decodeIfPresent(Bool.self, forKey: .guestYields) ?? true)
    }

    /// Settings for writing a VM to a file: one connection, no cap, and the guest stopped first
    /// (as virsh save does), so that its state is written once, with no dirty passes.
    public static let save = MigrationParameters(connections: 1, live: false)

    /// One connection. Several are faster: on a two-processor host with a 1 GiB guest under TCG
    /// (`tern migrate`, medians of 9 moves), four connections took about 125 ms instead of 150
    /// for an idle guest and 225 instead of 310 for one dirtying memory. But with QEMU 7.2, when the
    /// destination dies during a migration over several connections, the source QEMU's migration
    /// thread never finishes: the guest runs on, yet every later migration or save of it is
    /// refused ("duplicate yank instance") until it restarts. A failed move must leave the VM
    /// as movable as before, so several connections are only used when asked for.
    public static let automaticConnections = 1

    /// These parameters with ``connections`` decided.
    public var resolved: MigrationParameters {
        var copy = self
        copy.connections = connections ?? Self.automaticConnections
        return copy
    }

    /// What is out of range in these parameters and a move's time limit, if anything: the CLI
    /// asks before it sends a move, the daemon again for what comes through its API.
    public func problem(timeoutSeconds: Int?) -> String? {
        if let timeoutSeconds, !(1...604_800).contains(timeoutSeconds) {
            return "--timeout must be 1 s to 7 days (604800 s), not \(timeoutSeconds)"
        }
        if let maxDowntimeMs, !(0...2_000_000).contains(maxDowntimeMs) {
            return "--max-downtime must be 0 to 2000000 ms, not \(maxDowntimeMs)"
        }
        if let bandwidthMiBps, !(1...1_048_576).contains(bandwidthMiBps) {
            return "--bandwidth must be 1 to 1048576 MiB/s, not \(bandwidthMiBps)"
        }
        if let connections, !(1...16).contains(connections) { return "--connections must be 1 to 16, not \(connections)" }
        return nil
    }
}

/// Where a migration stands, as the hypervisor reports it.
public struct MigrationProgress: Sendable, Equatable, Codable {
    public enum Status: String, Sendable, Codable {
        case none, setup, active, postcopy, completing, completed, failed, cancelled
        /// A post-copy stream that broke off: the guest runs on the destination (stalled on
        /// the memory it still lacks) until the stream is resumed.
        case postcopyPaused = "postcopy-paused"
        /// Given up by the hypervisor just before its last pass, because the copy would have
        /// needed more passes than its tracking makes exact (``Hypervisor/exactLiveMigrationPasses``).
        /// The guest runs on at the source; the destination never got the end of the stream.
        case abandoned
    }

    public var status: Status
    /// The hypervisor's message when it failed.
    public var error: String?
    /// Milliseconds since the migration started.
    public var elapsedMs: Int
    /// Guest memory in bytes.
    public var memoryBytes: Int
    /// Bytes of guest memory still to send.
    public var remainingBytes: Int
    /// Bytes sent so far (the stream, including page headers).
    public var transferredBytes: Int
    /// Current rate in bytes per second.
    public var rateBytesPerSecond: Double
    /// How fast the guest dirties memory, in bytes per second.
    public var dirtyBytesPerSecond: Double
    /// The downtime the hypervisor expects if it stopped the guest now, in milliseconds.
    public var expectedDowntimeMs: Int?
    /// Passes over guest memory so far.
    public var rounds: Int
    /// The guest's real downtime, once completed.
    public var downtimeMs: Int?

    public init(
        status: Status, error: String? = nil, elapsedMs: Int = 0, memoryBytes: Int = 0, remainingBytes: Int = 0,
        transferredBytes: Int = 0, rateBytesPerSecond: Double = 0, dirtyBytesPerSecond: Double = 0,
        expectedDowntimeMs: Int? = nil, rounds: Int = 0, downtimeMs: Int? = nil
    ) {
        self.status = status
        self.error = error
        self.elapsedMs = elapsedMs
        self.memoryBytes = memoryBytes
        self.remainingBytes = remainingBytes
        self.transferredBytes = transferredBytes
        self.rateBytesPerSecond = rateBytesPerSecond
        self.dirtyBytesPerSecond = dirtyBytesPerSecond
        self.expectedDowntimeMs = expectedDowntimeMs
        self.rounds = rounds
        self.downtimeMs = downtimeMs
    }

    /// Percent of guest memory sent, 0–100.
    public var percent: Int {
        if status == .completed { return 100 }
        guard memoryBytes > 0 else { return 0 }
        return max(0, min(99, 100 - remainingBytes * 100 / memoryBytes))
    }

    /// True once the migration has ended, well or not.
    public var isFinished: Bool { [.completed, .failed, .cancelled, .abandoned].contains(status) }
}
