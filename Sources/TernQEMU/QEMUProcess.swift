import Foundation
import NIOConcurrencyHelpers
import Subprocess
import SystemPackage
import TernHypervisor

/// A QEMU that `ternd` started: this process's child, in a session of its own.
///
/// In its own session no signal meant for the daemon's terminal or process group reaches it,
/// and it lives on (adopted by init) should the daemon end; a daemon started again finds it by
/// its pid. It is not started with QEMU's `-daemonize`: that forks twice, and the copy-on-write
/// faults after each fork made every start about 10 ms slower here (QMP ready after 48 ms
/// against 39, 15 starts each, alternating); it also sent everything QEMU said after its start
/// to /dev/null. Here QEMU's output goes to the VM's hypervisor log for as long as it runs, and
/// this process waits on it, so it never lingers as a zombie.
final class QEMUProcess: Sendable {
    let pid: Int32
    private let ending: NIOLockedValueBox<Ending?>

    /// How the process ended.
    enum Ending: Sendable, Equatable {
        case exited(Int32)
        case signaled(Int32)
        /// Ended, but waiting on it failed, so how is not known.
        case unknown
    }

    private init(pid: Int32, ending: NIOLockedValueBox<Ending?>) {
        self.pid = pid
        self.ending = ending
    }

    /// How it ended; nil while it runs.
    var ended: Ending? { ending.withLockedValue { $0 } }

    /// Starts `command` with its standard output and error going to `log` (truncated first).
    ///
    /// - Throws: ``HypervisorError/startFailed(_:)`` when the log cannot be opened or the
    ///   binary cannot be run.
    static func spawn(_ command: QEMUCommandLine, log: URL) async throws -> QEMUProcess {
        let output: FileDescriptor
        do {
            output = try FileDescriptor.open(
                FilePath(log.path), .writeOnly, options: [.create, .truncate, .closeOnExec],
                permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } catch {
            throw HypervisorError.startFailed("cannot open the hypervisor log \(log.path): \(error)")
        }
        let options = {
            var options = PlatformOptions()
            options.createSession = true
            return options
        }()
        let binary = command.binary
        let arguments = command.arguments
        let ending = NIOLockedValueBox<Ending?>(nil)
        // Answered once: with the process as soon as it runs, or with why it could not be run.
        let answer = NIOLockedValueBox<CheckedContinuation<QEMUProcess, any Error>?>(nil)
        @Sendable func reply(_ result: Result<QEMUProcess, any Error>) {
            answer.withLockedValue { pending in
                defer { pending = nil }
                return pending
            }?.resume(with: result)
        }
        return try await withCheckedThrowingContinuation { continuation in
            answer.withLockedValue { $0 = continuation }
            // Runs for as long as QEMU does.
            Task.detached {
                do {
                    let result = try await Subprocess.run(
                        .path(FilePath(binary)), arguments: Arguments(arguments), platformOptions: options,
                        input: .none, output: .fileDescriptor(output, closeAfterSpawningProcess: true),
                        error: .combinedWithOutput
                    ) { execution in
                        reply(.success(QEMUProcess(pid: execution.processIdentifier.value, ending: ending)))
                    }
                    ending.withLockedValue {
                        switch result.terminationStatus {
                        case .exited(let code): $0 = .exited(code)
                        case .signaled(let number): $0 = .signaled(number)
                        }
                    }
                } catch {
                    ending.withLockedValue { $0 = .unknown }
                    reply(.failure(HypervisorError.startFailed("cannot run \(binary): \(error)")))
                }
            }
        }
    }
}
