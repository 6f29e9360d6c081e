import CCbc
import StrataCore
import Synchronization

/// CBC's solve entry point (CbcMain) keeps global state: two threads solving at once can make
/// one of them drop into CBC's interactive prompt and read stdin. Every solve holds this lock.
private let cbcLock = Mutex(())

/// A linear (or mixed-integer) program solved with COIN-OR CBC. CBC over GLPK: both solve
/// these models in well under a millisecond to tens of milliseconds (PLATFORM-NOTES), and
/// CBC's EPL-2.0 licence does not bind the whole binary as GLPK's GPL-3 would.
public final class LinearProgram {
    public struct Variable: Hashable, Sendable { public let index: Int }
    public enum Relation: Sendable { case lessOrEqual, greaterOrEqual, equal }

    struct Column { var name: String; var lower: Double; var upper: Double; var objective: Double; var integer: Bool }
    struct Row { var name: String; var terms: [(Int, Double)]; var relation: Relation; var rhs: Double }

    private var columns: [Column] = []
    private var rows: [Row] = []

    public init() {}

    public var variableCount: Int { columns.count }

    @discardableResult
    public func variable(_ name: String, lower: Double = 0, upper: Double = .infinity, objective: Double = 0,
                         integer: Bool = false) -> Variable {
        columns.append(Column(name: name, lower: lower, upper: upper, objective: objective, integer: integer))
        return Variable(index: columns.count - 1)
    }

    public func setObjective(_ v: Variable, _ coefficient: Double) { columns[v.index].objective = coefficient }

    /// sum(terms) relation rhs. Terms with the same variable add up.
    public func constrain(_ terms: [(Variable, Double)], _ relation: Relation, _ rhs: Double, name: String = "") {
        var merged: [Int: Double] = [:]
        for (v, c) in terms where c != 0 { merged[v.index, default: 0] += c }
        rows.append(Row(name: name, terms: merged.sorted { $0.key < $1.key }, relation: relation, rhs: rhs))
    }

    public struct Solution: Sendable {
        public var objective: Double
        public var values: [Double]
        /// Stopped at the time limit with a feasible, not proven optimal, solution (MILP).
        public var timedOut: Bool
        public subscript(_ v: Variable) -> Double { values[v.index] }
    }

    /// Minimises the objective. Returns nil when the program is infeasible, or (MILPs) when a
    /// `cutoff` is given and no point has an objective below it: branch-and-bound then prunes
    /// every node whose bound reaches the cutoff, which is what makes a search over many
    /// programs fast once a good plan is known.
    public func minimize(timeLimit: Double? = nil, cutoff: Double? = nil) throws -> Solution? {
        // Pure LPs go to CLP directly: no global state, so they may run on several threads.
        if !columns.contains(where: \.integer) { return try solveLinear() }
        return try cbcLock.withLock { _ in try solveLocked(timeLimit: timeLimit, cutoff: cutoff) }
    }

    /// CLP on the column-major matrix; rows become lower/upper bounds.
    private func solveLinear() throws -> Solution? {
        guard let model = Clp_newModel() else { throw StrataError.invalidRequest("CLP could not create a model") }
        defer { Clp_deleteModel(model) }
        Clp_setLogLevel(model, 0)
        var entries = [[(Int32, Double)]](repeating: [], count: columns.count)
        for (r, row) in rows.enumerated() { for (c, v) in row.terms { entries[c].append((Int32(r), v)) } }
        var start: [CoinBigIndex] = [0], index: [Int32] = [], value: [Double] = []
        for column in entries {
            for (r, v) in column { index.append(r); value.append(v) }
            start.append(CoinBigIndex(index.count))
        }
        let lower = columns.map(\.lower), upper = columns.map { $0.upper.isFinite ? $0.upper : 1e30 }, objective = columns.map(\.objective)
        let rowLower = rows.map { $0.relation == .lessOrEqual ? -1e30 : $0.rhs }
        let rowUpper = rows.map { $0.relation == .greaterOrEqual ? 1e30 : $0.rhs }
        Clp_loadProblem(model, Int32(columns.count), Int32(rows.count), start, index, value, lower, upper, objective, rowLower, rowUpper)
        _ = Clp_initialSolve(model)
        guard Clp_isProvenOptimal(model) != 0, let solution = Clp_getColSolution(model) else { return nil }
        return Solution(objective: Clp_objectiveValue(model), values: Array(UnsafeBufferPointer(start: solution, count: columns.count)),
                        timedOut: false)
    }

    private func solveLocked(timeLimit: Double?, cutoff: Double?) throws -> Solution? {
        guard let model = Cbc_newModel() else { throw StrataError.invalidRequest("CBC could not create a model") }
        defer { Cbc_deleteModel(model) }
        Cbc_setLogLevel(model, 0)
        for c in columns {
            c.name.withCString { Cbc_addCol(model, $0, c.lower, c.upper.isFinite ? c.upper : 1e30, c.objective, c.integer ? 1 : 0, 0, nil, nil) }
        }
        for r in rows {
            var indices = r.terms.map { Int32($0.0) }
            var coefficients = r.terms.map(\.1)
            let sense: CChar = switch r.relation {
            case .lessOrEqual: CChar(UInt8(ascii: "L"))
            case .greaterOrEqual: CChar(UInt8(ascii: "G"))
            case .equal: CChar(UInt8(ascii: "E"))
            }
            r.name.withCString { name in
                Cbc_addRow(model, name, Int32(indices.count), &indices, &coefficients, sense, r.rhs)
            }
        }
        Cbc_setObjSense(model, 1)
        if let timeLimit { Cbc_setMaximumSeconds(model, timeLimit) }
        if let cutoff { Cbc_setCutoff(model, cutoff) }
        // CBC stops branch-and-bound at a 1e-4 relative gap by default; plans are compared
        // against each other, so prove optimality to 1e-7.
        // (Typed setters only: Cbc_setParameter parses text through shared state and is not
        // safe when models are solved on several threads.)
        if columns.contains(where: \.integer) {
            Cbc_setAllowableFractionGap(model, 1e-7)
            Cbc_setAllowableGap(model, 1e-6)
        }
        _ = Cbc_solve(model)
        if Cbc_isProvenInfeasible(model) != 0 { return nil }
        let optimal = Cbc_isProvenOptimal(model) != 0
        guard let solution = Cbc_getColSolution(model) else { return nil }
        let values = Array(UnsafeBufferPointer(start: solution, count: columns.count))
        // A time-limited MILP may stop without any feasible point.
        if !optimal && !feasible(values) { return nil }
        if let cutoff, Cbc_getObjValue(model) >= cutoff || !feasible(values) { return nil }
        return Solution(objective: Cbc_getObjValue(model), values: values, timedOut: !optimal)
    }

    /// Whether `values` satisfy every row and bound (to 1e-6 relative).
    func feasible(_ values: [Double]) -> Bool {
        for (i, c) in columns.enumerated() where values[i] < c.lower - 1e-6 || values[i] > c.upper + 1e-6 { return false }
        for r in rows {
            let lhs = r.terms.reduce(0) { $0 + values[$1.0] * $1.1 }
            let tolerance = 1e-6 * max(1, abs(r.rhs))
            switch r.relation {
            case .lessOrEqual: if lhs > r.rhs + tolerance { return false }
            case .greaterOrEqual: if lhs < r.rhs - tolerance { return false }
            case .equal: if abs(lhs - r.rhs) > tolerance { return false }
            }
        }
        return true
    }
}
