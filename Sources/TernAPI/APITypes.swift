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
    /// running, paused, shutoff or crashed.
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
}
