import Foundation
import TernCPU

/// What Tern needs from any hypervisor: what this host can offer a guest, and running VMs.
///
/// Nothing above a backend sees its wire protocol or command-line flags: the QEMU backend
/// (`TernQEMU`) implements this with QMP and QEMU's options; a native KVM backend could too.
public protocol Hypervisor: Sendable {
    /// The accelerator guests run with here, and why it was chosen.
    var accelerator: Accelerator { get }

    /// What this host can give a guest: the features the accelerator can present, limited to
    /// what the host is configured to offer.
    func hostOffer() async throws -> ResolvedCPU

    /// Starts a VM. Refuses before anything runs if the guest CPU cannot be honoured.
    func start(_ configuration: VMConfiguration, files: VMFiles) async throws -> any VirtualMachineInstance

    /// Starts a VM that waits for its state to arrive at `address` (TCP port 0: a port of the
    /// hypervisor's choosing) instead of booting. Its CPU is checked before anything arrives;
    /// with `autostart` it runs as soon as the state is in, otherwise it stays paused.
    ///
    /// - Returns: the VM and the address it really listens on.
    func startIncoming(
        _ configuration: VMConfiguration, files: VMFiles, address: MigrationAddress, parameters: MigrationParameters,
        autostart: Bool
    ) async throws -> (any VirtualMachineInstance, MigrationAddress)

    /// Reattaches to a VM started earlier (by a previous daemon), or fails if it is gone.
    func attach(_ configuration: VMConfiguration, files: VMFiles, pid: Int32) async throws -> any VirtualMachineInstance

    /// The hypervisor processes still running for a VM's files, whoever started them: after a
    /// restart, those of a VM the daemon knows no pid for are out of its reach.
    func processes(of files: VMFiles) -> [Int32]

    /// Whether `pid` is a hypervisor process still running for a VM's files (not a reused pid).
    func isRunning(_ pid: Int32, for files: VMFiles) -> Bool

    /// How many passes over guest memory (the first and the last included) a live migration of
    /// a running guest may make and still deliver an exact copy of its memory; nil when any
    /// number may. The backend keeps a live migration within it where it can (QEMU under TCG,
    /// with no downtime limit asked for, makes two passes), and never sends the last pass of a
    /// live pre-copy migration that would exceed it: it gives the migration up instead
    /// (``MigrationProgress/Status/abandoned``), the guest goes on running here, and Tern moves it
    /// again without running during the transfer (``MigrationParameters/live`` false).
    var exactLiveMigrationPasses: Int? { get }
}

/// One running VM.
public protocol VirtualMachineInstance: Sendable {
    var name: String { get }
    /// The hypervisor process.
    var pid: Int32 { get }

    /// The VM's run state as the hypervisor reports it.
    func runState() async throws -> VMRunState
    /// Stops the vCPUs (libvirt's suspend).
    func pause() async throws
    /// Restarts paused vCPUs.
    func resume() async throws
    /// Asks the guest to power off (ACPI power button).
    func shutdown() async throws
    /// Ends the VM at once.
    func destroy() async throws
    /// The features the guest was really given, read back from the running hypervisor.
    func guestFeatures() async throws -> [String]
    /// Applies an outgoing migration's settings ahead of ``migrate(to:parameters:)``, while the
    /// destination is still getting ready; `migrate` applies them itself when this was not done.
    func prepareMigration(_ parameters: MigrationParameters) async throws
    /// Sends the VM's state to `address` (where an incoming VM or a save file waits). A running
    /// guest keeps running until the last pass (unless `parameters.live` is false: then it is
    /// paused first); once completed it stays stopped here.
    ///
    /// - Returns: how long a running guest was paused while the migration started and then
    ///   resumed, if the hypervisor needs such a pause for a live migration (zero otherwise: also
    ///   when the last pass began during that pause, which then is part of the downtime).
    @discardableResult
    func migrate(to address: MigrationAddress, parameters: MigrationParameters) async throws -> Duration
    /// Where the current migration (outgoing, or incoming for an incoming VM) stands.
    func migrationProgress() async throws -> MigrationProgress
    /// For an incoming VM waiting for its state: where the migration stands, told from what the
    /// hypervisor announced where that suffices (a query may have to wait until the state is
    /// loaded, and take processor time from the load meanwhile). For waiting on the end, where
    /// an answer a moment old does no harm; decisions ask ``migrationProgress()``.
    func receivingProgress() async throws -> MigrationProgress
    /// Waits until the migration's state may have changed (the hypervisor says so, or the guest
    /// stops for the last pass), or at most `limit`. Lets a follower poll rarely without
    /// missing the moment the migration ends.
    func waitForMigrationChange(upTo limit: Duration) async
    /// Stops an outgoing migration; the guest goes on running here.
    func cancelMigration() async throws
    /// Switches a running outgoing migration to post-copy (the guest continues on the
    /// destination while the rest of its memory follows).
    func switchToPostcopy() async throws
    /// Receiving side of a post-copy stream that broke off: listens again at `address` for the
    /// rest. Returns the address really listened on (TCP port 0 resolved).
    func recoverIncoming(at address: MigrationAddress) async throws -> MigrationAddress
    /// Sending side of a post-copy stream that broke off: connects to `address` (where the
    /// destination listens again) and sends the rest.
    func resumeMigration(to address: MigrationAddress) async throws
    /// When the hypervisor last stopped the vCPUs, in seconds since 1970 by its clock (nil: never
    /// seen). With ``lastResumed`` on the other side this gives a migration's real downtime.
    var lastStopped: Double? { get }
    /// When the hypervisor last resumed the vCPUs, in seconds since 1970 by its clock.
    var lastResumed: Double? { get }
    /// Waits until the VM's process has ended and says how.
    func waitForExit() async -> VMExit
}

/// The accelerator a VM runs with.
public enum Accelerator: String, Codable, Sendable {
    /// Hardware virtualization through KVM (libvirt domain type `kvm`).
    case kvm
    /// QEMU's own CPU emulator (libvirt domain type `qemu`).
    case tcg

    /// libvirt's domain type for this accelerator.
    public var domainType: String { self == .kvm ? "kvm" : "qemu" }
}

/// What a VM is made of: the hypervisor-independent part of its definition plus the guest CPU
/// Tern computed for it.
public struct VMConfiguration: Sendable, Equatable {
    public var name: String
    public var memoryMiB: Int
    public var vcpus: Int
    public var kernel: String?
    public var initrd: String?
    public var cmdline: String?
    public var disk: String?
    /// Exactly the CPU the guest must see.
    public var cpu: GuestCPU
    /// The memory balloon device, if any (libvirt's `<memballoon>`).
    public var memoryBalloon: MemoryBalloon?

    public init(
        name: String, memoryMiB: Int, vcpus: Int, kernel: String?, initrd: String?, cmdline: String?, disk: String?,
        cpu: GuestCPU, memoryBalloon: MemoryBalloon? = MemoryBalloon()
    ) {
        self.name = name
        self.memoryMiB = memoryMiB
        self.vcpus = vcpus
        self.kernel = kernel
        self.initrd = initrd
        self.cmdline = cmdline
        self.disk = disk
        self.cpu = cpu
        self.memoryBalloon = memoryBalloon
    }
}

/// A virtio memory balloon. With free page reporting the guest tells the hypervisor which of its
/// memory is free, and the hypervisor gives that memory back to the host: the VM holds less host
/// memory, and a save or a migration carries less (a reported page reads as zero). The guest
/// needs the virtio balloon driver; without it the device is simply unused.
public struct MemoryBalloon: Sendable, Equatable {
    /// libvirt's `freePageReporting`; on by default in Tern (off in libvirt).
    public var freePageReporting: Bool

    public init(freePageReporting: Bool = true) { self.freePageReporting = freePageReporting }
}

/// Where a VM's runtime files live.
public struct VMFiles: Sendable, Equatable {
    /// The directory holding them.
    public var directory: URL
    /// Everything the guest writes to its serial console.
    public var consoleLog: URL { directory.appendingPathComponent("console.log") }
    /// The console socket a user attaches to.
    public var consoleSocket: URL { directory.appendingPathComponent("console.sock") }
    /// The hypervisor's control socket.
    public var controlSocket: URL { directory.appendingPathComponent("control.sock") }
    /// The hypervisor's own messages (its standard output and error, for as long as it runs).
    public var hypervisorLog: URL { directory.appendingPathComponent("hypervisor.log") }

    public init(directory: URL) { self.directory = directory }
}

/// libvirt's domain states, as far as Tern distinguishes them.
public enum VMRunState: String, Codable, Sendable {
    case running, paused, shutoff, crashed
}

/// How a VM's process ended.
public enum VMExit: Sendable, Equatable {
    /// The guest powered off.
    case poweredOff
    /// The guest kernel panicked.
    case panicked
    /// The VM was destroyed, or its process was killed.
    case killed(signal: Int32)
    /// The hypervisor failed; its message.
    case failed(String)
}
