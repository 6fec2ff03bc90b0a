import CTernHost
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Tern's save file: a VM's state written to disk by `tern save` and read by `tern restore`.
///
/// Layout (all integers little-endian):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | magic `TERNSAVE` |
/// | 8 | 4 | format version (this code writes and reads 1) |
/// | 12 | 4 | header length (4096) |
/// | 16 | 8 | metadata length M (at most 16 MiB) |
/// | 24 | 8 | stream length S |
/// | 32 | 4 | CRC-32C of the metadata |
/// | 36 | 4 | CRC-32C of the stream |
/// | 40 | 32 | the Tern version that wrote it (UTF-8, NUL-padded) |
/// | 72 | … | zero up to offset 4092 |
/// | 4092 | 4 | CRC-32C of bytes 0..<4092 |
/// | 4096 | M | metadata: JSON written by the host (VM definition, guest CPU, source host) |
/// | 4096+M | S | the hypervisor's state stream |
///
/// The file's size is exactly 4096 + M + S. A save is written to `FILE.partial` and renamed
/// into place only once complete, so a file under the final name is never half written. The
/// reader checks everything it can before anything is started (magic, version, lengths
/// against the file's size, both CRCs of header and metadata); the stream's CRC is checked
/// while it is sent, and the receiver must not commit until ``SaveFileReader/sendStream(to:)``
/// has returned.
public enum SaveFile {
    public static let magic: [UInt8] = Array("TERNSAVE".utf8)
    public static let formatVersion: UInt32 = 1
    public static let headerLength = 4096
    public static let maximumMetadataLength = 16 << 20
    /// No VM state stream is larger than this (1 TiB); anything claiming more is not ours.
    public static let maximumStreamLength = 1 << 40
}

/// What is wrong with a save file, or with writing one.
public enum SaveFileError: Error, Sendable, CustomStringConvertible, Equatable {
    case cannotOpen(path: String, reason: String)
    /// The file does not start with Tern's magic.
    case notASaveFile(path: String)
    /// Written by a newer Tern in a format this one cannot read.
    case newerFormat(path: String, version: UInt32, supported: UInt32)
    /// Shorter than its header says.
    case truncated(path: String, expected: Int, actual: Int)
    /// Longer than its header says, or a length beyond any limit.
    case oversized(path: String, what: String)
    /// A checksum does not match.
    case corrupt(path: String, what: String)
    /// Reading, writing or streaming failed.
    case io(path: String, reason: String)

    /// True for reading, writing or streaming failures (not the file's content).
    public var isInputOutput: Bool { if case .io = self { true } else { false } }

    public var description: String {
        switch self {
        case let .cannotOpen(path, reason): "cannot open save file \(path): \(reason)"
        case let .notASaveFile(path): "\(path) is not a Tern save file (no TERNSAVE header)"
        case let .newerFormat(path, version, supported):
            "\(path) is save file format \(version); this Tern reads format \(supported) (upgrade Tern)"
        case let .truncated(path, expected, actual):
            "\(path) is truncated: \(actual) bytes, its header says \(expected)"
        case let .oversized(path, what): "\(path) is not a valid save file: \(what)"
        case let .corrupt(path, what): "\(path) is corrupt: \(what)"
        case let .io(path, reason): "save file \(path): \(reason)"
        }
    }
}

/// The fixed-size header at the start of a save file.
public struct SaveFileHeader: Equatable, Sendable {
    public var formatVersion: UInt32 = SaveFile.formatVersion
    public var metadataLength: Int
    public var streamLength: Int
    public var metadataCRC: UInt32
    public var streamCRC: UInt32
    public var ternVersion: String

    public init(metadataLength: Int, streamLength: Int, metadataCRC: UInt32, streamCRC: UInt32, ternVersion: String) {
        self.metadataLength = metadataLength
        self.streamLength = streamLength
        self.metadataCRC = metadataCRC
        self.streamCRC = streamCRC
        self.ternVersion = ternVersion
    }

    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: SaveFile.headerLength)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            for i in 0..<(T.bitWidth / 8) { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
        }
        bytes.replaceSubrange(0..<8, with: SaveFile.magic)
        put(formatVersion, at: 8)
        put(UInt32(SaveFile.headerLength), at: 12)
        put(UInt64(metadataLength), at: 16)
        put(UInt64(streamLength), at: 24)
        put(metadataCRC, at: 32)
        put(streamCRC, at: 36)
        for (i, b) in Array(ternVersion.utf8.prefix(31)).enumerated() { bytes[40 + i] = b }
        put(crc32c(bytes[0..<(SaveFile.headerLength - 4)]), at: SaveFile.headerLength - 4)
        return bytes
    }

    /// Reads and checks a header; `path` is for messages.
    public init(decoding bytes: [UInt8], path: String) throws(SaveFileError) {
        guard bytes.count >= 8, Array(bytes[0..<8]) == SaveFile.magic else { throw .notASaveFile(path: path) }
        guard bytes.count >= SaveFile.headerLength else {
            throw .truncated(path: path, expected: SaveFile.headerLength, actual: bytes.count)
        }
        func get<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
            (0..<(T.bitWidth / 8)).reduce(T.zero) { $0 | T(bytes[offset + $1]) << (8 * $1) }
        }
        let version = get(UInt32.self, at: 8)
        // A newer format is reported as such even if the rest of its header differs from ours.
        if version > SaveFile.formatVersion {
            throw .newerFormat(path: path, version: version, supported: SaveFile.formatVersion)
        }
        let stored = get(UInt32.self, at: SaveFile.headerLength - 4)
        guard crc32c(bytes[0..<(SaveFile.headerLength - 4)]) == stored else {
            throw .corrupt(path: path, what: "header checksum mismatch")
        }
        guard version >= 1, get(UInt32.self, at: 12) == UInt32(SaveFile.headerLength) else {
            throw .corrupt(path: path, what: "unknown format version \(version) or header length")
        }
        let metadata = get(UInt64.self, at: 16)
        let stream = get(UInt64.self, at: 24)
        guard metadata <= UInt64(SaveFile.maximumMetadataLength) else {
            throw .oversized(path: path, what: "metadata of \(metadata) bytes (limit \(SaveFile.maximumMetadataLength))")
        }
        guard stream <= UInt64(SaveFile.maximumStreamLength) else {
            throw .oversized(path: path, what: "state stream of \(stream) bytes (limit \(SaveFile.maximumStreamLength))")
        }
        formatVersion = version
        metadataLength = Int(metadata)
        streamLength = Int(stream)
        metadataCRC = get(UInt32.self, at: 32)
        streamCRC = get(UInt32.self, at: 36)
        ternVersion = String(decoding: bytes[40..<72].prefix { $0 != 0 }, as: UTF8.self)
    }

    /// The size the whole file must have.
    public var fileLength: Int { SaveFile.headerLength + metadataLength + streamLength }
}

/// CRC-32C of some bytes.
public func crc32c<C: ContiguousBytes>(_ bytes: C, continuing crc: UInt32 = 0) -> UInt32 {
    bytes.withUnsafeBytes { tern_crc32c(crc, $0.baseAddress, $0.count) }
}

public func crc32c(_ bytes: ArraySlice<UInt8>, continuing crc: UInt32 = 0) -> UInt32 {
    bytes.withUnsafeBytes { tern_crc32c(crc, $0.baseAddress, $0.count) }
}

/// A flag a blocking copy checks between blocks.
public final class CopyCancellation: @unchecked Sendable {
    fileprivate let flag = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
    public init() { flag.initialize(to: 0) }
    deinit { flag.deallocate() }
    public func cancel() { flag.pointee = 1 }
}

/// Runs a blocking copy on its own thread.
func runBlocking<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread { continuation.resume(returning: work()) }
    }
}

func errnoText(_ code: Int32) -> String { String(cString: strerror(code)) }

/// Writes a save file: header placeholder and metadata first, then the stream as the hypervisor
/// sends it through a unix socket, then the real header; renamed into place by ``finish()``.
public final class SaveFileWriter: @unchecked Sendable {
    public let path: String
    let partialPath: String
    let metadata: Data
    private var fd: Int32 = -1
    private var streamLength = 0
    private var streamCRC: UInt32 = 0
    private var listener: Int32 = -1
    private var listenerPath: String?

    /// Creates `path.partial` and writes the metadata.
    public init(path: String, metadata: Data) throws(SaveFileError) {
        self.path = path
        partialPath = path + ".partial"
        self.metadata = metadata
        guard metadata.count <= SaveFile.maximumMetadataLength else {
            throw .oversized(path: path, what: "metadata of \(metadata.count) bytes")
        }
        // A new file only: another save to the same path may be writing this one (and a FIFO
        // left there would block the open).
        fd = open(partialPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let reason = errno == EEXIST
                ? "it exists: another save to \(path) is underway, or one was cut off (then remove it)" : errnoText(errno)
            throw .cannotOpen(path: partialPath, reason: reason)
        }
        let placeholder = [UInt8](repeating: 0, count: SaveFile.headerLength)
        do {
            try writeAll(placeholder)
            try writeAll(Array(metadata))
        } catch {
            discard()
            throw error
        }
    }

    private func writeAll(_ bytes: [UInt8], at offset: UInt64? = nil) throws(SaveFileError) {
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
        do {
            if let offset { try handle.seek(toOffset: offset) }
            try handle.write(contentsOf: bytes)
        } catch {
            throw .io(path: partialPath, reason: "\(error)")
        }
    }

    /// Opens the unix socket the hypervisor will send the stream to.
    public func listen(at socket: String) throws(SaveFileError) {
        listener = tern_unix_listen(socket)
        guard listener >= 0 else { throw .io(path: socket, reason: "cannot listen: \(errnoText(errno))") }
        listenerPath = socket
    }

    /// Receives the stream on the socket opened by ``listen(at:)``: appends to the file
    /// everything the first connection sends, until it closes. Gives up when nobody connects
    /// within `acceptTimeout` seconds, when the sender is silent for `idleTimeout` seconds, or
    /// when cancelled.
    public func receiveStream(acceptTimeout: Int = 30, idleTimeout: Int = 60, cancellation: CopyCancellation)
        async throws(SaveFileError)
    {
        guard listener >= 0, let socket = listenerPath else { throw .io(path: partialPath, reason: "not listening") }
        let listener = self.listener
        self.listener = -1
        let fd = self.fd
        let partialPath = self.partialPath
        let result: Result<(Int, UInt32), SaveFileError> = await runBlocking {
            defer {
                close(listener)
                unlink(socket)
            }
            let connection = tern_accept(listener, Int32(acceptTimeout * 1000), cancellation.flag)
            guard connection >= 0 else {
                return .failure(.io(path: partialPath, reason: "the hypervisor did not connect: \(errnoText(errno))"))
            }
            defer { close(connection) }
            let copy = tern_copy(connection, fd, 0, 0, Int32(idleTimeout * 1000), cancellation.flag)
            if copy.error != 0 {
                let side = copy.failed_read != 0 ? "reading the hypervisor's stream" : "writing"
                return .failure(.io(path: partialPath, reason: "\(side): \(errnoText(copy.error))"))
            }
            return .success((Int(copy.bytes), copy.crc))
        }
        switch result {
        case .success(let (length, crc)):
            streamLength = length
            streamCRC = crc
        case .failure(let error): throw error
        }
    }

    /// Writes the header, flushes and renames the file into place. Returns the file's size.
    @discardableResult
    public func finish(ternVersion: String) async throws(SaveFileError) -> Int {
        let header = SaveFileHeader(
            metadataLength: metadata.count, streamLength: streamLength, metadataCRC: crc32c(metadata), streamCRC: streamCRC,
            ternVersion: ternVersion)
        try writeAll(header.encoded(), at: 0)
        // Flushing a file of gigabytes takes a while: on a thread of its own, not the caller's.
        let file = fd
        if let failure = await runBlocking({ fsync(file) == 0 ? nil : errnoText(errno) }) {
            throw .io(path: partialPath, reason: "flushing: \(failure)")
        }
        close(fd)
        fd = -1
        guard rename(partialPath, path) == 0 else { throw .io(path: path, reason: "renaming into place: \(errnoText(errno))") }
        return header.fileLength
    }

    /// Removes the partial file.
    public func discard() {
        if listener >= 0 { close(listener) }
        if let listenerPath { unlink(listenerPath) }
        listener = -1
        if fd >= 0 { close(fd) }
        fd = -1
        unlink(partialPath)
    }

    deinit {
        if fd >= 0 { close(fd) }
        if listener >= 0 { close(listener) }
    }
}

/// Reads a save file, checking it before anything is done with it.
public struct SaveFileReader: Sendable {
    public let path: String
    public let header: SaveFileHeader
    public let metadata: Data

    /// Opens and checks header, lengths and metadata. The stream is checked by ``sendStream(to:cancellation:)``.
    public init(path: String) throws(SaveFileError) {
        self.path = path
        let fd = try Self.openRegularFile(path)
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .cannotOpen(path: path, reason: errnoText(errno)) }
        let size = Int(info.st_size)
        let head = try Self.read(fd, count: min(size, SaveFile.headerLength), at: 0, path: path)
        header = try SaveFileHeader(decoding: head, path: path)
        if size < header.fileLength { throw .truncated(path: path, expected: header.fileLength, actual: size) }
        if size > header.fileLength {
            throw .oversized(path: path, what: "\(size - header.fileLength) bytes after the end its header gives")
        }
        let bytes = try Self.read(fd, count: header.metadataLength, at: SaveFile.headerLength, path: path)
        guard crc32c(bytes) == header.metadataCRC else { throw .corrupt(path: path, what: "metadata checksum mismatch") }
        metadata = Data(bytes)
    }

    private static func read(_ fd: Int32, count: Int, at offset: Int, path: String) throws(SaveFileError) -> [UInt8] {
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
        var bytes: [UInt8] = []
        do {
            try handle.seek(toOffset: UInt64(offset))
            while bytes.count < count, let chunk = try handle.read(upToCount: count - bytes.count), !chunk.isEmpty {
                bytes += chunk
            }
        } catch {
            throw .io(path: path, reason: "\(error)")
        }
        if bytes.count < count { throw .truncated(path: path, expected: offset + count, actual: offset + bytes.count) }
        return bytes
    }

    /// Reads the whole stream and checks its CRC (to say why a receiver gave up on it).
    public func verifyStream() async throws(SaveFileError) {
        try await withStream { fd, path, header in
            let sink = open("/dev/null", O_WRONLY | O_CLOEXEC)
            defer { close(sink) }
            let copy = tern_copy(fd, sink, UInt64(header.streamLength), 0, 0, nil)
            if copy.error != 0 { return .io(path: path, reason: errnoText(copy.error)) }
            return copy.crc == header.streamCRC ? nil : .corrupt(path: path, what: "state stream checksum mismatch")
        }
    }

    /// Opens `path` for reading if it is a regular file. Without blocking: opening a FIFO
    /// would wait for a writer (on a device, for whatever it does on open).
    private static func openRegularFile(_ path: String) throws(SaveFileError) -> Int32 {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw .cannotOpen(path: path, reason: errnoText(errno)) }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw .cannotOpen(path: path, reason: "not a regular file")
        }
        return fd
    }

    /// Runs `body` on its own thread with the file open at the start of the stream.
    private func withStream(_ body: @escaping @Sendable (Int32, String, SaveFileHeader) -> SaveFileError?)
        async throws(SaveFileError)
    {
        let path = self.path
        let header = self.header
        let result: SaveFileError? = await runBlocking {
            let fd: Int32
            do throws(SaveFileError) { fd = try Self.openRegularFile(path) } catch { return error }
            defer { close(fd) }
            guard lseek(fd, off_t(SaveFile.headerLength + header.metadataLength), SEEK_SET) >= 0 else {
                return .io(path: path, reason: errnoText(errno))
            }
            return body(fd, path, header)
        }
        if let result { throw result }
    }

    /// Connects to the hypervisor listening at `socket` and sends it the state stream, checking
    /// its CRC on the way. Throws ``SaveFileError/corrupt(path:what:)`` after sending when it does
    /// not match: the receiver must then be discarded, never resumed. Gives up when the
    /// hypervisor takes nothing for `idleTimeout` seconds (it hangs), or when cancelled.
    public func sendStream(to socket: String, idleTimeout: Int = 60, cancellation: CopyCancellation) async throws(SaveFileError) {
        try await withStream { fd, path, header in
            var connection: Int32 = -1
            for _ in 0..<100 {
                connection = tern_unix_connect(socket)
                if connection >= 0 { break }
                usleep(20_000)
            }
            guard connection >= 0 else { return .io(path: socket, reason: "cannot reach the hypervisor: \(errnoText(errno))") }
            defer { close(connection) }
            let copy = tern_copy(fd, connection, UInt64(header.streamLength), 0, Int32(idleTimeout * 1000), cancellation.flag)
            if copy.error == ETIMEDOUT && copy.failed_read == 0 {
                return .io(path: socket, reason: "the hypervisor stopped taking the state (nothing taken for \(idleTimeout) s)")
            }
            if copy.error != 0 {
                let side = copy.failed_read != 0 ? "reading" : "sending to the hypervisor"
                return .io(path: path, reason: "\(side): \(errnoText(copy.error))")
            }
            if Int(copy.bytes) != header.streamLength {
                return .truncated(path: path, expected: header.fileLength, actual: SaveFile.headerLength + header.metadataLength + Int(copy.bytes))
            }
            if copy.crc != header.streamCRC { return .corrupt(path: path, what: "state stream checksum mismatch") }
            return nil
        }
    }
}
