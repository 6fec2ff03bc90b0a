import Foundation
import TernCPU
import TernHypervisor

/// Builds the QEMU command line for a VM.
///
/// Direct kernel boot on the `q35` machine with no default devices: the serial console goes
/// to a chardev that keeps a log file (and, for a daemon, a socket a user can attach to), QMP
/// listens on the VM's control socket, a `pvpanic` device lets a panicking guest say so, and a
/// virtio balloon (unless the definition has none) takes back the memory the guest reports free.
///
/// The machine leaves out what a directly booted Linux guest does not use (``leanMachine``).
/// Every device is state that a migration's last, guest-stopped phase must send and the
/// destination must load, and loading a device that maps memory rebuilds QEMU's memory map,
/// once per address space.
public struct QEMUCommandLine: Sendable {
    /// Where the console goes.
    public enum Console: Sendable {
        /// A unix socket to attach to, logging to the console log (VMs run by `ternd`).
        case socket
        /// This process's terminal, also logging to the console log (`tern run`).
        case terminal
    }

    public var binary: String
    public var arguments: [String]

    /// `q35` without the parts a directly booted Linux guest does not use: system management
    /// mode (used by firmware, and its memory windows are rebuilt when the chipset loads), the
    /// SATA controller (Tern's disk is virtio), the SMBus controller and VMware's I/O port.
    /// Measured on a 1 GiB idle guest under TCG, with the vAPIC off as well: the last phase of a
    /// live migration (guest stopped at the source to running at the destination) went from a
    /// median of 3.9 ms to 2.7 ms (8 moves each, taking turns; see README.md).
    public static let leanMachine = "q35,smm=off,sata=off,smbus=off,vmport=off"

    public init(
        binary: String, configuration: VMConfiguration, cpu: QEMUGuestCPU, accelerator: Accelerator, files: VMFiles,
        console: Console
    ) {
        self.binary = binary
        var args = [
            "-name", "guest=\(configuration.name)",
            "-machine", Self.leanMachine, "-accel", accelerator.rawValue,
            // The vAPIC speeds up 32-bit Windows' TPR accesses; it adds a memory map rebuild
            // to every migration's last phase.
            "-global", "apic-common.vapic=off",
            "-cpu", cpu.argument,
            "-m", "\(configuration.memoryMiB)M",
            "-smp", "\(configuration.vcpus)",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-device", "pvpanic",
        ]
        if let kernel = configuration.kernel { args += ["-kernel", kernel] }
        if let initrd = configuration.initrd { args += ["-initrd", initrd] }
        if let cmdline = configuration.cmdline { args += ["-append", cmdline] }
        if let disk = configuration.disk { args += ["-drive", "file=\(disk),if=virtio,format=raw"] }
        if let balloon = configuration.memoryBalloon {
            // Modern virtio only: no legacy I/O BAR, one memory map rebuild less when it is loaded.
            args += [
                "-device",
                "virtio-balloon-pci,id=balloon0,free-page-reporting=\(balloon.freePageReporting ? "on" : "off"),disable-legacy=on",
            ]
        }
        let log = files.consoleLog.path
        switch console {
        case .socket:
            args += [
                "-chardev",
                "socket,id=console,path=\(files.consoleSocket.path),server=on,wait=off,logfile=\(log),logappend=on",
            ]
        case .terminal:
            args += ["-chardev", "stdio,id=console,mux=on,signal=off,logfile=\(log),logappend=on"]
        }
        args += ["-serial", "chardev:console", "-qmp", "unix:\(files.controlSocket.path),server=on,wait=off"]
        arguments = args
    }
}
