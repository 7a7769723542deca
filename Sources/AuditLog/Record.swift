/// One audit record (format version 1, docs/audit-log.md): who asked for what, on what, whether
/// it was allowed and why, and — in a second record of the same operation — how it ended. Its
/// payload is the canonical JSON of exactly these keys; nothing secret is ever put in one.
public struct AuditRecord: Equatable, Sendable {
    public static let formatVersion: Int64 = 1
    /// The longest string any field may hold, in UTF-8 bytes.
    public static let maxText = 1024

    /// Who acted.
    public enum Actor: Equatable, Sendable {
        /// A local process, by its credentials (SO_PEERCRED, or the launcher's own).
        case local(uid: UInt32, gid: UInt32, pid: Int32)
        /// A remote client, by the SHA-256 of its certificate's public key ("sha256:" + 64 hex digits).
        case certificate(fingerprint: String)
        /// Bulkhead itself (a VM's own events, start-up, recovery).
        case system
    }

    public enum Stage: String, Sendable { case intent, outcome }

    public var sequence: UInt64
    /// UTC, nanoseconds since 1970.
    public var timeNanoseconds: Int64
    /// The host's boot id (/proc/sys/kernel/random/boot_id): tells one boot's records from the next.
    public var bootID: String
    public var actor: Actor
    public var tenant: String?
    /// What was asked or what happened, dotted: "vm.start", "vm.guest-fault", "log.recovered-torn-tail".
    public var action: String
    /// What it was done to: "vm/NAME", "image/SHA256", nil for the host itself.
    public var target: String?
    public var allowed: Bool
    /// Why it was allowed or denied (the grant that matched, or the rule that refused).
    public var reason: String
    public var stage: Stage
    /// Ties an intent to its outcome.
    public var operation: String
    /// How it ended (outcome records), nil for an intent.
    public var result: String?

    public init(sequence: UInt64, timeNanoseconds: Int64, bootID: String, actor: Actor, tenant: String? = nil,
                action: String, target: String? = nil, allowed: Bool, reason: String, stage: Stage,
                operation: String, result: String? = nil) {
        self.sequence = sequence; self.timeNanoseconds = timeNanoseconds; self.bootID = bootID; self.actor = actor
        self.tenant = tenant; self.action = action; self.target = target; self.allowed = allowed; self.reason = reason
        self.stage = stage; self.operation = operation; self.result = result
    }

    public var json: JSONValue {
        let actorJSON: JSONValue
        switch actor {
        case .local(let uid, let gid, let pid):
            actorJSON = .object(["kind": .string("local"), "uid": .integer(Int64(uid)), "gid": .integer(Int64(gid)), "pid": .integer(Int64(pid))])
        case .certificate(let f): actorJSON = .object(["kind": .string("certificate"), "fingerprint": .string(f)])
        case .system: actorJSON = .object(["kind": .string("system")])
        }
        func text(_ s: String?) -> JSONValue { s.map(JSONValue.string) ?? .null }
        return .object([
            "v": .integer(Self.formatVersion), "seq": .integer(Int64(clamping: sequence)), "time_ns": .integer(timeNanoseconds),
            "boot_id": .string(bootID), "actor": actorJSON, "tenant": text(tenant), "action": .string(action),
            "target": text(target), "decision": .object(["allowed": .bool(allowed), "reason": .string(reason)]),
            "stage": .string(stage.rawValue), "operation": .string(operation), "result": text(result),
        ])
    }

    /// The record's payload: what is framed, hashed into the tree and signed over. Written
    /// directly in the canonical key order (the same bytes as `json.canonicalBytes`, which a test
    /// checks), since every append makes one.
    public var payload: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(320)
        func raw(_ s: StaticString) { s.withUTF8Buffer { out.append(contentsOf: $0) } }
        func text(_ s: String?) { if let s { JSONValue.encodeString(s, into: &out) } else { raw("null") } }
        func int(_ i: Int64) {
            // Decimal digits written in place (no String per number).
            if i < 0 { out.append(UInt8(ascii: "-")) }
            var m = i.magnitude, digits: (UInt64, Int) = (0, 0)
            if m == 0 { out.append(UInt8(ascii: "0")); return }
            let start = out.count
            while m > 0 { out.append(UInt8(ascii: "0") + UInt8(m % 10)); m /= 10; digits.1 += 1 }
            out[start...].reverse()
        }
        raw("{\"action\":"); text(action)
        raw(",\"actor\":")
        switch actor {
        case .local(let uid, let gid, let pid):
            raw("{\"gid\":"); int(Int64(gid)); raw(",\"kind\":\"local\",\"pid\":"); int(Int64(pid)); raw(",\"uid\":"); int(Int64(uid)); raw("}")
        case .certificate(let f): raw("{\"fingerprint\":"); text(f); raw(",\"kind\":\"certificate\"}")
        case .system: raw("{\"kind\":\"system\"}")
        }
        raw(",\"boot_id\":"); text(bootID)
        raw(",\"decision\":{\"allowed\":"); if allowed { raw("true") } else { raw("false") }
        raw(",\"reason\":"); text(reason); raw("}")
        raw(",\"operation\":"); text(operation)
        raw(",\"result\":"); text(result)
        raw(",\"seq\":"); int(Int64(clamping: sequence))
        raw(",\"stage\":"); text(stage.rawValue)
        raw(",\"target\":"); text(target)
        raw(",\"tenant\":"); text(tenant)
        raw(",\"time_ns\":"); int(timeNanoseconds)
        raw(",\"v\":"); int(Self.formatVersion); raw("}")
        return out
    }

    /// Why this record could not be written as a version-1 record (a field empty or over 1024
    /// bytes, a number out of range, a malformed fingerprint, an intent with a result or an outcome
    /// without one), or nil: the same rules `parse` applies, checked on the fields.
    public var problem: String? {
        func bad(_ s: String?, _ name: String, optional: Bool = false) -> String? {
            guard let s else { return optional ? nil : "\(name) is missing" }
            return s.isEmpty || s.utf8.count > Self.maxText ? "\(name) is not a string of 1 to \(Self.maxText) bytes" : nil
        }
        if sequence > UInt64(Int64.max) { return "seq is out of range" }
        if timeNanoseconds < 0 { return "time_ns is negative" }
        if case .local(_, _, let pid) = actor, pid < 0 { return "actor.pid is negative" }
        if case .certificate(let f) = actor {
            guard f.hasPrefix("sha256:"), f.utf8.count == 71, f.utf8.dropFirst(7).allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) else {
                return "a certificate actor has a fingerprint sha256:<64 lowercase hex digits>"
            }
        }
        if let p = bad(bootID, "boot_id") ?? bad(tenant, "tenant", optional: true) ?? bad(action, "action") ?? bad(target, "target", optional: true)
            ?? bad(reason, "decision.reason") ?? bad(operation, "operation") ?? bad(result, "result", optional: true) { return p }
        if stage == .intent && result != nil { return "an intent has no result" }
        if stage == .outcome && result == nil { return "an outcome has a result" }
        return nil
    }

    /// Why a payload is not a version-1 record.
    public struct ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// Parses a payload: canonical JSON with exactly the version-1 keys and types. Anything else
    /// (a missing or extra key, a wrong type, an out-of-range number, an over-long string) is an
    /// error that says which field.
    public static func parse(_ payload: [UInt8]) throws(ParseError) -> AuditRecord {
        // The common case, a valid record, read straight from the bytes: a canonical record has
        // exactly these keys, so they come in exactly this order. It is taken only when its fields
        // pass the record's rules and it encodes back to exactly these bytes; anything else goes
        // the general way below, which says what is wrong.
        if let r = direct(payload), r.problem == nil, r.payload == payload { return r }
        return try general(payload)
    }

    /// The payload read in the one key order a canonical record has; nil at the first surprise.
    static func direct(_ payload: [UInt8]) -> AuditRecord? {
        var p = JSONValue.Parser(bytes: payload)
        do {
            try p.expect("{\"action\":"); let action = try p.string()
            try p.expect(",\"actor\":{")
            let actor: Actor
            if p.peek("\"fingerprint\":") {
                try p.expect("\"fingerprint\":"); let f = try p.string()
                try p.expect(",\"kind\":\"certificate\"}")
                actor = .certificate(fingerprint: f)
            } else if p.peek("\"gid\":") {
                try p.expect("\"gid\":"); let gid = try p.integer()
                try p.expect(",\"kind\":\"local\",\"pid\":"); let pid = try p.integer()
                try p.expect(",\"uid\":"); let uid = try p.integer()
                try p.expect("}")
                guard let g = UInt32(exactly: gid), let u = UInt32(exactly: uid), let q = Int32(exactly: pid), q >= 0 else { return nil }
                actor = .local(uid: u, gid: g, pid: q)
            } else {
                try p.expect("\"kind\":\"system\"}")
                actor = .system
            }
            try p.expect(",\"boot_id\":"); let bootID = try p.string()
            try p.expect(",\"decision\":{\"allowed\":")
            let allowed: Bool
            if p.peek("true") { try p.expect("true"); allowed = true } else { try p.expect("false"); allowed = false }
            try p.expect(",\"reason\":"); let reason = try p.string()
            try p.expect("},\"operation\":"); let operation = try p.string()
            try p.expect(",\"result\":"); let result = try p.optionalString()
            try p.expect(",\"seq\":"); let seq = try p.integer()
            try p.expect(",\"stage\":"); let stageText = try p.string()
            try p.expect(",\"target\":"); let target = try p.optionalString()
            try p.expect(",\"tenant\":"); let tenant = try p.optionalString()
            try p.expect(",\"time_ns\":"); let time = try p.integer()
            try p.expect(",\"v\":1}")
            guard p.i == payload.count, seq >= 0, let stage = Stage(rawValue: stageText) else { return nil }
            return AuditRecord(sequence: UInt64(seq), timeNanoseconds: time, bootID: bootID, actor: actor, tenant: tenant, action: action,
                               target: target, allowed: allowed, reason: reason, stage: stage, operation: operation, result: result)
        } catch {
            return nil
        }
    }

    static func general(_ payload: [UInt8]) throws(ParseError) -> AuditRecord {
        let value: JSONValue
        do { value = try JSONValue.parse(payload) } catch { throw ParseError(description: error.description) }
        guard case .object(let o) = value else { throw ParseError(description: "the payload is not a JSON object") }
        let keys: Set<String> = ["v", "seq", "time_ns", "boot_id", "actor", "tenant", "action", "target", "decision", "stage", "operation", "result"]
        guard Set(o.keys) == keys else {
            let missing = keys.subtracting(o.keys).sorted(), extra = Set(o.keys).subtracting(keys).sorted()
            throw ParseError(description: "keys: missing \(missing), unexpected \(extra.map { String($0.prefix(40)) })")
        }
        func int(_ k: String, _ v: JSONValue?, _ range: ClosedRange<Int64>) throws(ParseError) -> Int64 {
            guard case .integer(let i)? = v, range.contains(i) else { throw ParseError(description: "\(k) is not an integer in \(range)") }
            return i
        }
        func text(_ k: String, _ v: JSONValue?, optional: Bool = false) throws(ParseError) -> String? {
            if optional, case .null? = v { return nil }
            guard case .string(let s)? = v, !s.isEmpty, s.utf8.count <= maxText else {
                throw ParseError(description: "\(k) is not a string of 1 to \(maxText) bytes\(optional ? " or null" : "")")
            }
            return s
        }
        guard try int("v", o["v"], 0...Int64.max) == formatVersion else { throw ParseError(description: "v is not \(formatVersion)") }
        let seq = try int("seq", o["seq"], 0...Int64.max)
        let time = try int("time_ns", o["time_ns"], 0...Int64.max)
        guard case .object(let a)? = o["actor"], case .string(let kind)? = a["kind"] else {
            throw ParseError(description: "actor is not an object with a kind")
        }
        let actor: Actor
        switch kind {
        case "local":
            guard Set(a.keys) == ["kind", "uid", "gid", "pid"] else { throw ParseError(description: "a local actor has kind, uid, gid and pid") }
            actor = .local(uid: UInt32(try int("actor.uid", a["uid"], 0...Int64(UInt32.max))),
                           gid: UInt32(try int("actor.gid", a["gid"], 0...Int64(UInt32.max))),
                           pid: Int32(try int("actor.pid", a["pid"], 0...Int64(Int32.max))))
        case "certificate":
            guard Set(a.keys) == ["kind", "fingerprint"], let f = try text("actor.fingerprint", a["fingerprint"]),
                  f.hasPrefix("sha256:"), f.utf8.count == 71, f.dropFirst(7).allSatisfy({ "0123456789abcdef".contains($0) }) else {
                throw ParseError(description: "a certificate actor has kind and a fingerprint sha256:<64 lowercase hex digits>")
            }
            actor = .certificate(fingerprint: f)
        case "system":
            guard a.keys.count == 1 else { throw ParseError(description: "a system actor has only its kind") }
            actor = .system
        default:
            throw ParseError(description: "actor kind '\(kind.prefix(40))' is not local, certificate or system")
        }
        guard case .object(let d)? = o["decision"], Set(d.keys) == ["allowed", "reason"], case .bool(let allowed)? = d["allowed"] else {
            throw ParseError(description: "decision is not an object of allowed (a boolean) and reason")
        }
        guard case .string(let s)? = o["stage"], let stage = Stage(rawValue: s) else { throw ParseError(description: "stage is not intent or outcome") }
        let result = try text("result", o["result"], optional: true)
        if stage == .intent && result != nil { throw ParseError(description: "an intent has no result") }
        if stage == .outcome && result == nil { throw ParseError(description: "an outcome has a result") }
        return AuditRecord(sequence: UInt64(seq), timeNanoseconds: time, bootID: try text("boot_id", o["boot_id"]) ?? "",
                           actor: actor, tenant: try text("tenant", o["tenant"], optional: true),
                           action: try text("action", o["action"]) ?? "", target: try text("target", o["target"], optional: true),
                           allowed: allowed, reason: try text("decision.reason", d["reason"]) ?? "", stage: stage,
                           operation: try text("operation", o["operation"]) ?? "", result: result)
    }
}
