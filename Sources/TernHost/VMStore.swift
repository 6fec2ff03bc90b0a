import Foundation
import GRDB

/// One VM as stored in the host's state database.
struct VMRecord: Codable, FetchableRecord, PersistableRecord, Sendable {
    static let databaseTableName = "vm"

    var name: String
    /// The domain XML as the user gave it.
    var definition: String
    /// running, paused, shutoff, crashed, or incoming (being received: a migration or restore).
    var state: String
    /// The hypervisor process while running or paused.
    var pid: Int32?
    /// The guest CPU it was started with (JSON of `GuestCPUInfo`), kept until it restarts.
    var guestCPU: String?
    /// Why it last stopped, when not cleanly.
    var reason: String?
    /// The console's last lines when it crashed (JSON array).
    var lastConsoleLines: String?
    var updatedAt: Date
    /// While a live migration (pre-copy) is underway: the destination daemon, as the user named
    /// it. A daemon restarted before the move ended asks that daemon where the VM is.
    var movingTo: String? = nil
    /// While a VM is being received in place of a shut-off one of the same name: that one's
    /// record (JSON of `VMRecord`), put back if the daemon restarts before the VM has arrived.
    var replaced: String? = nil

    /// Dates are stored as seconds since 1970: GRDB's default text format goes through a
    /// Foundation `DateFormatter`, which loads ICU's calendar and time-zone data into the daemon
    /// at its first save. (Rows written as text before still read back.)
    static func databaseDateEncodingStrategy(for column: String) -> DatabaseDateEncodingStrategy { .timeIntervalSince1970 }
}

/// The host's VM definitions and states, in SQLite under the state directory.
///
/// The database is in WAL mode with `synchronous = NORMAL`: a state change costs no disk flush
/// (several of them lie on a migration's critical path), and the database stays consistent
/// whatever happens. A power cut may lose the last changes, but it also ends every VM, and
/// ``VMHost/recover()`` reconciles the records with what is running at the next start.
///
/// Schema (migration "v1"): table `vm` with `name` (primary key), `definition`, `state`, `pid`,
/// `guestCPU`, `reason`, `lastConsoleLines`, `updatedAt`; "v2" adds `movingTo`.
struct VMStore: Sendable {
    let queue: DatabaseQueue

    init(path: String) throws {
        do {
            var configuration = Configuration()
            configuration.journalMode = .wal
            configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = NORMAL") }
            queue = try DatabaseQueue(path: path, configuration: configuration)
            var migrator = DatabaseMigrator()
            migrator.registerMigration("v1") { db in
                try db.create(table: "vm") { table in
                    table.primaryKey("name", .text)
                    table.column("definition", .text).notNull()
                    table.column("state", .text).notNull()
                    table.column("pid", .integer)
                    table.column("guestCPU", .text)
                    table.column("reason", .text)
                    table.column("lastConsoleLines", .text)
                    table.column("updatedAt", .datetime).notNull()
                }
            }
            migrator.registerMigration("v2") { db in
                try db.alter(table: "vm") { table in table.add(column: "movingTo", .text) }
            }
            migrator.registerMigration("v3") { db in
                try db.alter(table: "vm") { table in table.add(column: "replaced", .text) }
            }
            try migrator.migrate(queue)
        } catch {
            throw HostError.database("cannot open \(path): \(error)")
        }
    }

    func all() throws -> [VMRecord] {
        do { return try queue.read { try VMRecord.order(Column("name")).fetchAll($0) } } catch { throw HostError.database("\(error)") }
    }

    func find(_ name: String) throws -> VMRecord? {
        do { return try queue.read { try VMRecord.fetchOne($0, key: name) } } catch { throw HostError.database("\(error)") }
    }

    func insert(_ record: VMRecord) throws {
        do { try queue.write { try record.insert($0) } } catch { throw HostError.database("\(error)") }
    }

    func save(_ record: VMRecord) throws {
        var record = record
        record.updatedAt = Date()
        let copy = record
        do { try queue.write { try copy.save($0) } } catch { throw HostError.database("\(error)") }
    }

    func delete(_ name: String) throws {
        do { _ = try queue.write { try VMRecord.deleteOne($0, key: name) } } catch { throw HostError.database("\(error)") }
    }
}
