import Foundation
import Testing

@testable import TernSaveFile
import CTernHost
#if canImport(Glibc)
import Glibc
#endif

/// The save file format: what the reader accepts, and every way it refuses a bad file.
@Suite final class SaveFileTests {
    /// A directory of its own for each test, removed after it.
    let directory: URL = {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("savefile-\(UUID().uuidString.prefix(8))")
        try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }()

    deinit { try? FileManager.default.removeItem(at: directory) }

    /// Writes a save file through the real writer, with `stream` sent over its socket.
    func write(metadata: String = #"{"name":"vm1"}"#, stream: [UInt8]) async throws -> String {
        let path = directory.appendingPathComponent("vm.save").path
        let writer = try SaveFileWriter(path: path, metadata: Data(metadata.utf8))
        let socket = directory.appendingPathComponent("s.sock").path
        try writer.listen(at: socket)
        let sender = Thread {
            let fd = tern_connect_for_test(socket)
            stream.withUnsafeBytes { _ = Glibc.write(fd, $0.baseAddress!, stream.count) }
            close(fd)
        }
        sender.start()
        try await writer.receiveStream(cancellation: CopyCancellation())
        _ = try await writer.finish(ternVersion: "test")
        return path
    }

    func error(_ path: String) -> SaveFileError? {
        do {
            _ = try SaveFileReader(path: path)
            return nil
        } catch { return error }
    }

    @Test func roundTrip() async throws {
        let stream = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let path = try await write(stream: stream)
        let reader = try SaveFileReader(path: path)
        #expect(String(decoding: reader.metadata, as: UTF8.self) == #"{"name":"vm1"}"#)
        #expect(reader.header.streamLength == stream.count)
        #expect(reader.header.ternVersion == "test")
        #expect(!FileManager.default.fileExists(atPath: path + ".partial"))
        // The stream arrives intact at a listener.
        let socket = directory.appendingPathComponent("r.sock").path
        let listener = tern_listen_for_test(socket)
        let received = LockedBytes()
        let receiver = Thread {
            let fd = accept(listener, nil, nil)
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, 65536) }
                if n <= 0 { break }
                received.append(buffer[0..<n])
            }
            close(fd)
        }
        receiver.start()
        try await reader.sendStream(to: socket, cancellation: CopyCancellation())
        for _ in 0..<100 where received.count < stream.count { try await Task.sleep(for: .milliseconds(10)) }
        #expect(received.bytes == stream)
    }

    /// A hypervisor that connects and then takes nothing (it hangs) does not hold the sender
    /// forever: after the idle limit it gives up and says why.
    @Test func sendingGivesUpOnAHypervisorThatStopsTakingTheState() async throws {
        // More than the socket buffers hold, so that the sender must wait for the reader.
        let stream = (0..<16_000_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let reader = try SaveFileReader(path: try await write(stream: stream))
        let socket = directory.appendingPathComponent("stuck.sock").path
        let listener = tern_listen_for_test(socket)
        defer { close(listener) }
        do {
            try await reader.sendStream(to: socket, idleTimeout: 1, cancellation: CopyCancellation())
            Issue.record("sent \(stream.count) bytes to a reader that takes none")
        } catch {
            #expect("\(error)".contains("the hypervisor stopped taking the state (nothing taken for 1 s)"), "\(error)")
        }
    }

    @Test func refusesForeignFile() throws {
        let path = directory.appendingPathComponent("foreign").path
        try Data("QEVM\u{0}\u{0}\u{0}\u{3} this is a QEMU stream, not a Tern save file".utf8).write(to: URL(fileURLWithPath: path))
        #expect(error(path) == .notASaveFile(path: path))
        let empty = directory.appendingPathComponent("empty").path
        #expect(FileManager.default.createFile(atPath: empty, contents: Data()))
        #expect(error(empty) == .notASaveFile(path: empty))
    }

    /// A FIFO (or a device) is refused at once, not waited on; so is a directory.
    @Test func refusesWhatIsNotARegularFile() throws {
        let fifo = directory.appendingPathComponent("fifo").path
        #expect(mkfifo(fifo, 0o600) == 0)
        #expect(error(fifo) == .cannotOpen(path: fifo, reason: "not a regular file"))
        #expect(error(directory.path) == .cannotOpen(path: directory.path, reason: "not a regular file"))
        #expect(error("/dev/zero") == .cannotOpen(path: "/dev/zero", reason: "not a regular file"))
    }

    /// Two saves to one path at once: the second is refused rather than mixed into the first.
    @Test func aSecondWriterToTheSamePathIsRefused() throws {
        let path = directory.appendingPathComponent("vm.save").path
        let first = try SaveFileWriter(path: path, metadata: Data("{}".utf8))
        #expect {
            _ = try SaveFileWriter(path: path, metadata: Data("{}".utf8))
        } throws: { "\($0)".contains("another save to \(path) is underway") }
        first.discard()
        #expect(!FileManager.default.fileExists(atPath: path + ".partial"))
        _ = try SaveFileWriter(path: path, metadata: Data("{}".utf8))
    }

    @Test func refusesTruncatedFile() async throws {
        let path = try await write(stream: [UInt8](repeating: 7, count: 10_000))
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.truncate(atOffset: 4096 + 14 + 5000)
        try handle.close()
        guard case .truncated(_, let expected, let actual)? = error(path) else {
            Issue.record("expected truncated, got \(String(describing: error(path)))")
            return
        }
        #expect(expected == 4096 + 14 + 10_000)
        #expect(actual == 4096 + 14 + 5000)
        // Cut inside the header.
        let handle2 = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle2.truncate(atOffset: 100)
        try handle2.close()
        #expect(error(path) == .truncated(path: path, expected: 4096, actual: 100))
    }

    @Test func refusesCorruptHeaderAndMetadata() async throws {
        let path = try await write(stream: [UInt8](repeating: 1, count: 1000))
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[4096 + 3] ^= 0x20  // metadata
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(error(path) == .corrupt(path: path, what: "metadata checksum mismatch"))
        bytes[4096 + 3] ^= 0x20
        bytes[20] ^= 0x01  // stream length, inside the header
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(error(path) == .corrupt(path: path, what: "header checksum mismatch"))
    }

    @Test func refusesCorruptStreamWhileSending() async throws {
        let path = try await write(stream: [UInt8](repeating: 9, count: 50_000))
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count - 100] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let reader = try SaveFileReader(path: path)  // header and metadata are fine
        let socket = directory.appendingPathComponent("c.sock").path
        let listener = tern_listen_for_test(socket)
        Thread {
            let fd = accept(listener, nil, nil)
            var buffer = [UInt8](repeating: 0, count: 65536)
            while buffer.withUnsafeMutableBytes({ read(fd, $0.baseAddress!, 65536) }) > 0 {}
            close(fd)
        }.start()
        await #expect(throws: SaveFileError.corrupt(path: path, what: "state stream checksum mismatch")) {
            try await reader.sendStream(to: socket, cancellation: CopyCancellation())
        }
    }

    @Test func refusesNewerFormatAndOversizedLengths() throws {
        func header(version: UInt32, metadata: UInt64, stream: UInt64) -> [UInt8] {
            var h = SaveFileHeader(metadataLength: 0, streamLength: 0, metadataCRC: 0, streamCRC: 0, ternVersion: "x").encoded()
            withUnsafeBytes(of: version.littleEndian) { for i in 0..<4 { h[8 + i] = $0[i] } }
            withUnsafeBytes(of: metadata.littleEndian) { for i in 0..<8 { h[16 + i] = $0[i] } }
            withUnsafeBytes(of: stream.littleEndian) { for i in 0..<8 { h[24 + i] = $0[i] } }
            let crc = crc32c(h[0..<4092])
            withUnsafeBytes(of: crc.littleEndian) { for i in 0..<4 { h[4092 + i] = $0[i] } }
            return h
        }
        let path = directory.appendingPathComponent("h").path
        try Data(header(version: 7, metadata: 0, stream: 0)).write(to: URL(fileURLWithPath: path))
        #expect(error(path) == .newerFormat(path: path, version: 7, supported: 1))
        try Data(header(version: 1, metadata: 1 << 40, stream: 0)).write(to: URL(fileURLWithPath: path))
        #expect(error(path) == .oversized(path: path, what: "metadata of 1099511627776 bytes (limit 16777216)"))
        try Data(header(version: 1, metadata: 0, stream: UInt64.max)).write(to: URL(fileURLWithPath: path))
        if case .oversized? = error(path) {} else { Issue.record("expected oversized, got \(String(describing: error(path)))") }
        // Trailing bytes after the end the header gives.
        try Data(header(version: 1, metadata: 0, stream: 0) + [1, 2, 3]).write(to: URL(fileURLWithPath: path))
        #expect(error(path) == .oversized(path: path, what: "3 bytes after the end its header gives"))
    }

    @Test func crcMatchesKnownValue() {
        // CRC-32C check value (RFC 3720): "123456789" → 0xE3069283.
        #expect(crc32c(Array("123456789".utf8)) == 0xE306_9283)
        #expect(crc32c(Array("56789".utf8), continuing: crc32c(Array("1234".utf8))) == 0xE306_9283)
    }
}

final class LockedBytes: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [UInt8] = []
    func append(_ bytes: ArraySlice<UInt8>) { lock.withLock { storage += bytes } }
    var bytes: [UInt8] { lock.withLock { storage } }
    var count: Int { lock.withLock { storage.count } }
}

func tern_connect_for_test(_ path: String) -> Int32 {
    for _ in 0..<100 {
        let fd = path.withCString { tern_unix_connect($0) }
        if fd >= 0 { return fd }
        usleep(10_000)
    }
    return -1
}

func tern_listen_for_test(_ path: String) -> Int32 { path.withCString { tern_unix_listen($0) } }
