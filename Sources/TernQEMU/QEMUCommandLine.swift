import Foundation
import TernCPU
import TernHypervisor

/// Builds the QEMU command line for a VM.
///
/// Direct kernel boot on the `q35` machine with no default devices: the serial console goes
/// to a chardev that keeps a log file (and, for a daemon, a socket a user can attach to), QMP
/// listens on the VM's control socket, a `pvpanic` device lets a panicking guest say so, and a
/// virtio balloon (unless the definition has none) takes back the memory the guest reports free.
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

    public init(
        binary: String, configuration: VMConfiguration, cpu: QEMUGuestCPU, accelerator: Accelerator, files: VMFiles,
        console: Console
    ) {
        self.binary = binary
        var args = [
            "-name", "guest=\(configuration.name)",
            "-machine", "q35", "-accel", accelerator.rawValue,
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
            args += ["-device", "virtio-balloon-pci,id=balloon0,free-page-reporting=\(balloon.freePageReporting ? "on" : "off")"]
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
