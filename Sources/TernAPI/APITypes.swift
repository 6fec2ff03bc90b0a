import TernHypervisor

/// The JSON types of `ternd`'s HTTP API, shared by the daemon and its clients.
///
/// Routes (all JSON; errors are `APIError` with an HTTP status):
///
/// | method | path | body → response |
/// |---|---|---|
/// | GET | /host | → `HostInfo` |
/// | GET | /vms | → `[VMInfo]` |
/// | POST | /vms | `DefineRequest` → `VMInfo` (define) |
/// | GET | /vms/{name} | → `VMInfo` |
/// | DELETE | /vms/{name} | → `VMInfo` (undefine; the VM must be shut off) |
/// | POST | /vms/{name}/start, /shutdown, /destroy, /suspend, /resume | → `VMInfo` |
/// | GET | /vms/{name}/console?lines=N | → `ConsoleText` (the log's last lines) |
/// | POST | /vms/{name}/save | `SaveRequest` → `SaveReport` (the VM is then shut off) |
/// | POST | /restore | `RestoreRequest` → `RestoreReport` |
/// | POST | /vms/{name}/migrate | `MigrateRequest` → `MigrationReport` (this daemon is the source) |
/// | GET | /vms/{name}/migration | → `MigrationProgress` (the current or last migration) |
/// | POST | /vms/{name}/migration/abort | → `MigrationProgress` (domjobabort: the save or move is cancelled) |
/// | POST | /migrations/check | `VMTransfer` → `IncomingCheckReply` (destination: the gate alone, nothing prepared) |
/// | POST | /migrations/incoming | `IncomingMigrationRequest` → `IncomingMigrationReply` (destination: gate, then prepare) |
/// | POST | /migrations/incoming/{name}/finish | → `IncomingMigrationFinish` (destination: the state is in, the guest runs) |
/// | POST | /migrations/incoming/{name}/recover | → `IncomingMigrationReply` (destination: listen again for a post-copy stream that broke off) |
/// | DELETE | /migrations/incoming/{name} | → `VMInfo` (destination: a VM still arriving is discarded, state `undefined`; one that has arrived is kept and reported as it runs) |
public enum API {
    /// The API's version, in every response's `Tern-API` header.
    public static let version = "1"
}

/// A request to define a VM from libvirt domain XML.
public struct DefineRequest: Codable, Sendable {
    public var xml: String
    public init(xml: String) { self.xml = xml }
}

/// The guest CPU a VM has (fixed when it started) or would get.
public struct GuestCPUInfo: Codable, Sendable, Equatable {
    /// How it was chosen: host-passthrough, custom (a model), compatibility or pool.
    public var mode: String
    public var model: String?
    public var vendor: String?
    public var family: Int?
    public var modelNumber: Int?
    public var stepping: Int?
    /// Exactly the features the guest sees.
    public var features: [String]
    /// The CLFLUSH line size the guest should see, when Tern changes it.
    public var clflushLineSize: Int?
    /// What the hypervisor cannot honour of this CPU, in words.
    public var notHonoured: [String]

    public init(
        mode: String, model: String?, vendor: String?, family: Int?, modelNumber: Int?, stepping: Int?, features: [String],
        clflushLineSize: Int?, notHonoured: [String]
    ) {
        self.mode = mode
        self.model = model
        self.vendor = vendor
        self.family = family
        self.modelNumber = modelNumber
        self.stepping = stepping
        self.features = features
        self.clflushLineSize = clflushLineSize
        self.notHonoured = notHonoured
    }
}

/// One VM as the daemon reports it (`virsh dominfo`).
public struct VMInfo: Codable, Sendable, Equatable {
    public var name: String
    /// running, paused, shutoff or crashed; incoming while it is being received (a migration
    /// or restore); undefined in the answer to an action that removed it.
    public var state: String
    public var vcpus: Int
    public var memoryMiB: Int
    /// The CPU it runs with (nil while shut off and never started).
    public var cpu: GuestCPUInfo?
    public var pid: Int32?
    public var consoleLog: String
    public var consoleSocket: String
    /// Why it stopped, when it did not stop cleanly (e.g. "the guest kernel panicked").
    public var reason: String?
    /// The last console lines when it crashed.
    public var lastConsoleLines: [String]?

    public init(
        name: String, state: String, vcpus: Int, memoryMiB: Int, cpu: GuestCPUInfo?, pid: Int32?, consoleLog: String,
        consoleSocket: String, reason: String?, lastConsoleLines: [String]?
    ) {
        self.name = name
        self.state = state
        self.vcpus = vcpus
        self.memoryMiB = memoryMiB
        self.cpu = cpu
        self.pid = pid
        self.consoleLog = consoleLog
        self.consoleSocket = consoleSocket
        self.reason = reason
        self.lastConsoleLines = lastConsoleLines
    }
}

/// The host a daemon runs on.
public struct HostInfo: Codable, Sendable {
    public var hostname: String
    public var accelerator: String
    public var acceleratorReason: String
    /// The CPU this host stands for (`this host` or the `--host-cpu` file).
    public var hostCPUSource: String
    public var vendor: String?
    /// What a guest may get here.
    public var offer: [String]
    /// libvirt capabilities XML.
    public var capabilitiesXML: String
    public var vms: Int

    public init(
        hostname: String, accelerator: String, acceleratorReason: String, hostCPUSource: String, vendor: String?,
        offer: [String], capabilitiesXML: String, vms: Int
    ) {
        self.hostname = hostname
        self.accelerator = accelerator
        self.acceleratorReason = acceleratorReason
        self.hostCPUSource = hostCPUSource
        self.vendor = vendor
        self.offer = offer
        self.capabilitiesXML = capabilitiesXML
        self.vms = vms
    }
}

/// The last lines of a VM's console.
public struct ConsoleText: Codable, Sendable {
    public var lines: [String]
    public init(lines: [String]) { self.lines = lines }
}

/// The host a VM comes from, as recorded in save files and migration requests.
public struct HostFingerprint: Codable, Sendable, Equatable {
    public var hostname: String
    /// `this host` or the `--host-cpu` file the host stands in for.
    public var cpuSource: String
    public var vendor: String?
    public var family: Int?
    public var model: Int?
    public var stepping: Int?
    public var accelerator: String
    /// What a guest may get there.
    public var offer: [String]

    public init(
        hostname: String, cpuSource: String, vendor: String?, family: Int?, model: Int?, stepping: Int?, accelerator: String,
        offer: [String]
    ) {
        self.hostname = hostname
        self.cpuSource = cpuSource
        self.vendor = vendor
        self.family = family
        self.model = model
        self.stepping = stepping
        self.accelerator = accelerator
        self.offer = offer
    }
}

/// A VM on the move: what a destination (or a save file) needs besides the state stream.
public struct VMTransfer: Codable, Sendable, Equatable {
    public var name: String
    /// Its libvirt domain XML.
    public var definition: String
    /// The guest CPU it has now (fixed when it booted); the destination must offer all of it.
    public var cpu: GuestCPUInfo
    /// Where it comes from.
    public var source: HostFingerprint
    /// Whether its vCPUs were running (false: paused) when it left.
    public var running: Bool

    public init(name: String, definition: String, cpu: GuestCPUInfo, source: HostFingerprint, running: Bool) {
        self.name = name
        self.definition = definition
        self.cpu = cpu
        self.source = source
        self.running = running
    }
}

/// `tern save`: where to write the VM's state (a path on the daemon's host).
public struct SaveRequest: Codable, Sendable {
    public var path: String
    public init(path: String) { self.path = path }
}

public struct SaveReport: Codable, Sendable {
    public var vm: VMInfo
    public var path: String
    /// The save file's size in bytes.
    public var bytes: Int
    public var durationMs: Int
    public init(vm: VMInfo, path: String, bytes: Int, durationMs: Int) {
        self.vm = vm
        self.path = path
        self.bytes = bytes
        self.durationMs = durationMs
    }
}

/// `tern restore`: a save file (a path on the daemon's host), optionally under another name.
public struct RestoreRequest: Codable, Sendable {
    public var path: String
    public var name: String?
    /// Keep the vCPUs paused after restoring (default: as they were when saved).
    public var paused: Bool?
    public init(path: String, name: String? = nil, paused: Bool? = nil) {
        self.path = path
        self.name = name
        self.paused = paused
    }
}

public struct RestoreReport: Codable, Sendable {
    public var vm: VMInfo
    /// The host that saved it.
    public var source: HostFingerprint
    public var durationMs: Int
    public init(vm: VMInfo, source: HostFingerprint, durationMs: Int) {
        self.vm = vm
        self.source = source
        self.durationMs = durationMs
    }
}

/// `tern migrate`: where to, and how.
public struct MigrateRequest: Codable, Sendable {
    /// The destination daemon (`--connect` syntax: a socket path or tcp://host:port).
    public var destination: String
    public var parameters: MigrationParameters
    /// Give up (the VM stays here) after this many seconds.
    public var timeoutSeconds: Int?
    /// Quick migration: save here, restore there (the file goes through `directory`, which both
    /// hosts must see), instead of a live stream.
    public var quickDirectory: String?

    public init(destination: String, parameters: MigrationParameters, timeoutSeconds: Int? = nil, quickDirectory: String? = nil) {
        self.destination = destination
        self.parameters = parameters
        self.timeoutSeconds = timeoutSeconds
        self.quickDirectory = quickDirectory
    }
}

/// What a migration did.
public struct MigrationReport: Codable, Sendable {
    /// The VM as the destination now reports it.
    public var vm: VMInfo
    public var destination: String
    /// live, non-live (the guest paused for the transfer) or quick.
    public var kind: String
    /// From the request to the source forgetting its copy.
    public var totalMs: Int
    /// The destination's check and preparation (starting the receiving VM).
    public var prepareMs: Int
    /// The stream alone.
    public var transferMs: Int
    /// From the end of the stream to the destination's confirmation that the guest runs.
    public var confirmMs: Int
    /// How long the guest was stopped (all of it, including any pause while the stream started).
    public var downtimeMs: Int
    /// The part of the downtime spent while the stream started (the hypervisor's dirty tracking
    /// needed the guest paused then), if any.
    public var setupPauseMs: Int?
    public var bytes: Int
    public var rounds: Int
    /// Average over the transfer, MiB/s.
    public var throughputMiBps: Double
    /// Something the user should know about how the move went (e.g. why it was made again).
    public var note: String?
    /// What carried the stream: `tcp HOST:PORT`, or `unix PATH` between daemons on one machine.
    public var stream: String?

    public init(
        vm: VMInfo, destination: String, kind: String, totalMs: Int, prepareMs: Int, transferMs: Int, confirmMs: Int,
        downtimeMs: Int, bytes: Int, rounds: Int, throughputMiBps: Double, setupPauseMs: Int? = nil, stream: String? = nil
    ) {
        self.setupPauseMs = setupPauseMs
        self.stream = stream
        self.prepareMs = prepareMs
        self.confirmMs = confirmMs
        self.vm = vm
        self.destination = destination
        self.kind = kind
        self.totalMs = totalMs
        self.transferMs = transferMs
        self.downtimeMs = downtimeMs
        self.bytes = bytes
        self.rounds = rounds
        self.throughputMiBps = throughputMiBps
    }
}

/// Source → destination: check this VM and get ready to receive it.
public struct IncomingMigrationRequest: Codable, Sendable {
    public var vm: VMTransfer
    public var parameters: MigrationParameters
    /// The destination discards the incoming VM if it has not finished within this many seconds.
    public var timeoutSeconds: Int?
    /// The source reached this daemon through a Unix socket, so both are on one machine: the
    /// stream may come through a Unix socket too (nil, as from an older source: TCP).
    public var sameMachine: Bool?
    public init(vm: VMTransfer, parameters: MigrationParameters, timeoutSeconds: Int?, sameMachine: Bool? = nil) {
        self.vm = vm
        self.parameters = parameters
        self.timeoutSeconds = timeoutSeconds
        self.sameMachine = sameMachine
    }
}

/// Destination → source: where to send the stream.
public struct IncomingMigrationReply: Codable, Sendable {
    public var address: MigrationAddress
    public init(address: MigrationAddress) { self.address = address }
}

/// Destination → source: a VM like this one may come here (the processor compatibility check
/// passed and its name is free); nothing was prepared. A refusal is an error instead.
public struct IncomingCheckReply: Codable, Sendable {
    public var name: String
    /// The destination, as save files and migration requests record a host.
    public var host: HostFingerprint
    public init(name: String, host: HostFingerprint) {
        self.name = name
        self.host = host
    }
}

/// Destination → source: the VM is in and runs (or stays paused, as it was).
public struct IncomingMigrationFinish: Codable, Sendable {
    public var vm: VMInfo
    /// Milliseconds the destination spent after resuming the guest, before replying.
    public var afterResumeMs: Double
    /// When the hypervisor resumed the guest, in seconds since 1970 by the destination's clock.
    public var resumedAt: Double?
    public init(vm: VMInfo, afterResumeMs: Double, resumedAt: Double?) {
        self.vm = vm
        self.afterResumeMs = afterResumeMs
        self.resumedAt = resumedAt
    }
}

/// An error as the API returns it.
public struct APIError: Codable, Sendable, Error, CustomStringConvertible {
    /// A short machine-readable code (`not-found`, `invalid-definition`, `cpu-not-offered` …).
    public var code: String
    /// What went wrong, for the user.
    public var error: String

    public init(code: String, error: String) {
        self.code = code
        self.error = error
    }

    public var description: String { error }

    /// Whether this is the daemon's own answer (it got the request and said no), rather than the
    /// client's word that no answer came: unreachable (the request never arrived), or the
    /// connection closed, timed out or carried an unreadable reply (it may have been acted on).
    public var isAnswer: Bool { !["bad-endpoint", "unreachable", "closed", "timeout", "too-large", "bad-reply"].contains(code) }
}
