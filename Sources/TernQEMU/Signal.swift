import NIOConcurrencyHelpers

/// Wakes one follower when something happened: ``fire()`` ends the current ``wait(upTo:)`` at
/// once, and a ``fire()`` that came while nobody waited ends the next wait at once, so an event
/// between two waits is never slept through. A wait also ends after its limit.
final class Signal: Sendable {
    private struct State {
        var fired = false
        var waiter: (id: UInt64, continuation: CheckedContinuation<Void, Never>)?
        var nextID: UInt64 = 0
    }
    private let state = NIOLockedValueBox(State())

    func fire() {
        let waiter = state.withLockedValue { state in
            defer { state.waiter = nil }
            if state.waiter == nil { state.fired = true }
            return state.waiter
        }
        waiter?.continuation.resume()
    }

    func wait(upTo limit: Duration) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let id: UInt64? = state.withLockedValue { state in
                if state.fired {
                    state.fired = false
                    return nil
                }
                // A second waiter replaces the first, which is woken.
                state.waiter?.continuation.resume()
                state.nextID += 1
                state.waiter = (state.nextID, continuation)
                return state.nextID
            }
            guard let id else { return continuation.resume() }
            Task {
                try? await Task.sleep(for: limit)
                let waiter = self.state.withLockedValue { state -> CheckedContinuation<Void, Never>? in
                    guard let waiter = state.waiter, waiter.id == id else { return nil }
                    state.waiter = nil
                    return waiter.continuation
                }
                waiter?.resume()
            }
        }
    }
}
