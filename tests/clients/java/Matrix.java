// pgJDBC through pgveil: every logical type written with the typed setters and read back
// with the typed getters (and getObject's own classes), for prepareThreshold 0, 1 and the
// default, with binaryTransfer on (pgJDBC's default: binary results once a statement is
// server-prepared) and off; executeBatch. The values are those of matrix_values.py.
// Run as: java -cp postgresql.jar Matrix.java host port user password table
// Prints "jdbc ok N".
import java.math.BigDecimal;
import java.sql.*;
import java.time.*;
import java.util.*;

public class Matrix {
    static final String[] TYPES = {"text", "varchar", "int2", "int4", "int8", "numeric", "float8",
        "bool", "date", "timestamp", "timestamptz", "uuid", "bytea", "jsonb"};
    static final Map<String, Object> VALUES = new HashMap<>();
    static final Map<String, String> CLASSES = new HashMap<>();
    static final Map<String, Integer> SQL_TYPES = new HashMap<>();
    static {
        put("text", "Zoë O'Brien ✓ 日本 patient-note-4471", "java.lang.String", Types.VARCHAR);
        put("varchar", "varchar-Ünïcode-5512", "java.lang.String", Types.VARCHAR);
        put("int2", (short) 31337, "java.lang.Integer", Types.SMALLINT);
        put("int4", 1987654321, "java.lang.Integer", Types.INTEGER);
        put("int8", 8765432109876543L, "java.lang.Long", Types.BIGINT);
        put("numeric", new BigDecimal("98765.4321"), "java.math.BigDecimal", Types.NUMERIC);
        put("float8", 12345.625, "java.lang.Double", Types.DOUBLE);
        put("bool", true, "java.lang.Boolean", Types.BOOLEAN);
        put("date", LocalDate.of(1987, 6, 5), "java.sql.Date", Types.DATE);
        put("timestamp", LocalDateTime.of(2023, 4, 5, 6, 7, 8, 123456000), "java.sql.Timestamp", Types.TIMESTAMP);
        put("timestamptz", OffsetDateTime.of(2023, 4, 5, 6, 7, 8, 500000000, ZoneOffset.UTC), "java.sql.Timestamp", Types.TIMESTAMP_WITH_TIMEZONE);
        put("uuid", UUID.fromString("6f1c1a4e-8b1d-4c36-9b9c-2f1e5d7a3b11"), "java.util.UUID", Types.OTHER);
        put("bytea", bytes(), "[B", Types.BINARY);
        // jsonb as PostgreSQL prints it (keys sorted by length, then bytes).
        put("jsonb", "{\"codes\": [1, 2.5, true, null], \"diagnosis\": \"hypertension-8812\"}", "org.postgresql.util.PGobject", Types.OTHER);
    }
    static int checks = 0;

    static void put(String ty, Object value, String cls, int sqlType) {
        VALUES.put(ty, value);
        CLASSES.put(ty, cls);
        SQL_TYPES.put(ty, sqlType);
    }

    static byte[] bytes() {
        byte[] middle = "bytea-secret-9".getBytes();
        byte[] out = new byte[middle.length + 3];
        out[0] = 0;
        out[1] = 1;
        System.arraycopy(middle, 0, out, 2, middle.length);
        out[out.length - 1] = (byte) 0xff;
        return out;
    }

    static void check(boolean ok, String what) {
        checks++;
        if (!ok) {
            System.err.println("jdbc: MISMATCH " + what);
            System.exit(1);
        }
    }

    static List<String> columns() {
        List<String> out = new ArrayList<>();
        for (String ty : TYPES) {
            out.add("d_" + ty);
            out.add("r_" + ty);
        }
        return out;
    }

    static void set(PreparedStatement ps, int i, String ty, boolean isNull) throws SQLException {
        if (isNull) {
            ps.setNull(i, SQL_TYPES.get(ty));
            return;
        }
        Object v = VALUES.get(ty);
        switch (ty) {
            case "text", "varchar" -> ps.setString(i, (String) v);
            case "int2" -> ps.setShort(i, (Short) v);
            case "int4" -> ps.setInt(i, (Integer) v);
            case "int8" -> ps.setLong(i, (Long) v);
            case "numeric" -> ps.setBigDecimal(i, (BigDecimal) v);
            case "float8" -> ps.setDouble(i, (Double) v);
            case "bool" -> ps.setBoolean(i, (Boolean) v);
            case "bytea" -> ps.setBytes(i, (byte[]) v);
            case "jsonb" -> ps.setObject(i, "{\"diagnosis\": \"hypertension-8812\", \"codes\": [1, 2.5, true, null]}", Types.OTHER);
            default -> ps.setObject(i, v);
        }
    }

    static void checkValue(ResultSet rs, String column, String what) throws SQLException {
        String ty = column.substring(2);
        Object v = VALUES.get(ty);
        Object any = rs.getObject(column);
        check(any != null && any.getClass().getName().equals(CLASSES.get(ty)),
            what + " " + column + " getObject class " + (any == null ? "null" : any.getClass().getName()));
        boolean ok = switch (ty) {
            case "text", "varchar" -> rs.getString(column).equals(v);
            case "int2" -> rs.getShort(column) == (Short) v;
            case "int4" -> rs.getInt(column) == (Integer) v;
            case "int8" -> rs.getLong(column) == (Long) v;
            case "numeric" -> rs.getBigDecimal(column).equals(v);
            case "float8" -> rs.getDouble(column) == (Double) v;
            case "bool" -> rs.getBoolean(column) == (Boolean) v;
            case "date" -> rs.getObject(column, LocalDate.class).equals(v);
            case "timestamp" -> rs.getObject(column, LocalDateTime.class).equals(v);
            case "timestamptz" -> rs.getObject(column, OffsetDateTime.class).isEqual((OffsetDateTime) v);
            case "uuid" -> rs.getObject(column, UUID.class).equals(v);
            case "bytea" -> Arrays.equals(rs.getBytes(column), (byte[]) v);
            case "jsonb" -> rs.getString(column).equals(v);
            default -> false;
        };
        check(ok, what + " " + column + " = " + rs.getString(column));
    }

    static void roundTrip(String url, Properties props, String table, int base, String what) throws SQLException {
        List<String> cols = columns();
        String names = String.join(", ", cols);
        String marks = String.join(", ", Collections.nCopies(cols.size(), "?"));
        try (Connection conn = DriverManager.getConnection(url, props)) {
            try (Statement st = conn.createStatement()) {
                st.execute("SET TimeZone = 'Pacific/Auckland'");
            }
            try (PreparedStatement ps = conn.prepareStatement(
                    "INSERT INTO " + table + " (id, " + names + ") VALUES (?, " + marks + ")")) {
                for (int row = 1; row <= 2; row++) {
                    ps.setInt(1, base + row);
                    for (int i = 0; i < cols.size(); i++) {
                        set(ps, i + 2, cols.get(i).substring(2), row == 2);
                    }
                    check(ps.executeUpdate() == 1, what + " insert");
                }
            }
            try (PreparedStatement ps = conn.prepareStatement(
                    "SELECT id, " + names + " FROM " + table + " WHERE id = ?")) {
                // Six executions: past every prepareThreshold tested, so the statement is
                // server-prepared (and its results binary) for the later ones.
                for (int n = 0; n < 6; n++) {
                    ps.setInt(1, base + 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next(), what + " row");
                        for (String c : cols) {
                            checkValue(rs, c, what + " #" + n);
                        }
                    }
                    ps.setInt(1, base + 2);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next(), what + " null row");
                        for (String c : cols) {
                            rs.getObject(c);
                            check(rs.wasNull(), what + " " + c + " is NULL");
                        }
                    }
                }
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT id FROM " + table
                    + " WHERE d_text = ? AND d_date = ? AND d_uuid = ? AND d_int8 = ? AND id BETWEEN ? AND ?")) {
                for (int n = 0; n < 3; n++) {
                    set(ps, 1, "text", false);
                    set(ps, 2, "date", false);
                    set(ps, 3, "uuid", false);
                    set(ps, 4, "int8", false);
                    ps.setInt(5, base);
                    ps.setInt(6, base + 99);
                    try (ResultSet rs = ps.executeQuery()) {
                        check(rs.next() && rs.getInt(1) == base + 1 && !rs.next(), what + " search");
                    }
                }
            }
            // executeBatch: rewritten by pgJDBC into one round trip of Bind/Execute pairs.
            try (PreparedStatement ps = conn.prepareStatement(
                    "INSERT INTO " + table + " (id, r_text, d_timestamptz) VALUES (?, ?, ?)")) {
                for (int row = 10; row < 13; row++) {
                    ps.setInt(1, base + row);
                    set(ps, 2, "text", false);
                    set(ps, 3, "timestamptz", false);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                check(counts.length == 3, what + " batch");
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT r_text, d_timestamptz FROM " + table
                    + " WHERE id BETWEEN ? AND ? ORDER BY id")) {
                ps.setInt(1, base + 10);
                ps.setInt(2, base + 19);
                try (ResultSet rs = ps.executeQuery()) {
                    int n = 0;
                    while (rs.next()) {
                        checkValue(rs, "r_text", what + " batch row");
                        checkValue(rs, "d_timestamptz", what + " batch row");
                        n++;
                    }
                    check(n == 3, what + " batch rows " + n);
                }
            }
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement("UPDATE " + table + " SET r_jsonb = ? WHERE id = ?")) {
                set(ps, 1, "jsonb", false);
                ps.setInt(2, base + 2);
                check(ps.executeUpdate() == 1, what + " update");
            }
            conn.rollback();
            try (PreparedStatement ps = conn.prepareStatement("SELECT r_jsonb FROM " + table + " WHERE id = ?")) {
                ps.setInt(1, base + 2);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next() && rs.getString(1) == null, what + " rolled back");
                }
            }
            conn.commit();
        }
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/postgres";
        String table = args[4];
        String[][] configs = {
            {"0", "true"}, {"1", "true"}, {null, "true"}, {"1", "false"},
        };
        int base = 0;
        for (String[] config : configs) {
            Properties props = new Properties();
            props.setProperty("user", args[2]);
            props.setProperty("password", args[3]);
            props.setProperty("sslmode", "disable");
            props.setProperty("connectTimeout", "10");
            if (config[0] != null) {
                props.setProperty("prepareThreshold", config[0]);
            }
            props.setProperty("binaryTransfer", config[1]);
            String what = "prepareThreshold=" + (config[0] == null ? "default" : config[0])
                + " binaryTransfer=" + config[1];
            try {
                roundTrip(url, props, table, base, what);
            } catch (SQLException e) {
                System.err.println("jdbc: " + what + ": " + e.getSQLState() + " " + e.getMessage());
                System.exit(1);
            }
            base += 100;
        }
        System.out.println("jdbc ok " + checks);
    }
}
