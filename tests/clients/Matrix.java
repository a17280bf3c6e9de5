// An application of the client matrix on pgjdbc (prepareThreshold=1,
// reWriteBatchedInserts), run as an old version (legacy name only) or a new
// one (new name only) through Switchyard, one round per phase read from
// stdin; answers `ok` or `error ...` per round. Each round also runs a few
// distinct statements, so that a small statement cache evicts and closes
// statements at the start of later batches.
//
// Usage: java -cp postgresql.jar:. Matrix ROLE PORT TABLE CACHE
//   CACHE: default, or a number for preparedStatementCacheQueries

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.StringWriter;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Statement;
import java.util.Set;

import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class Matrix {
    static String role, table, col;
    static final Set<String> FOLDED = Set.of("backfilled", "verified", "reads_switched", "reads_verified", "contracted", "completed");

    public static void main(String[] args) throws Exception {
        role = args[0];
        table = args[2];
        col = role.equals("old") ? "email" : "email_address";
        String url = "jdbc:postgresql://127.0.0.1:" + args[1] + "/postgres?user=trust_user&sslmode=disable"
            + "&prepareThreshold=1&reWriteBatchedInserts=true"
            + (args[3].equals("default") ? "" : "&preparedStatementCacheQueries=" + args[3]);
        try (Connection c = DriverManager.getConnection(url)) {
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
            String line;
            int n = 0;
            while ((line = in.readLine()) != null) {
                String phase = line.trim();
                if (phase.isEmpty()) continue;
                if (phase.equals("quit")) break;
                n++;
                try {
                    round(c, phase, n);
                    System.out.println("ok");
                } catch (Exception e) {
                    if (!c.getAutoCommit()) {
                        c.rollback();
                        c.setAutoCommit(true);
                    }
                    System.out.println(("error " + e).replace('\n', ' '));
                }
                System.out.flush();
            }
        }
    }

    static String email(String phase, int n, int k) {
        return role + "-" + phase + "-" + n + "-" + k + "@example.com";
    }

    static void round(Connection c, String phase, int n) throws Exception {
        boolean writes = role.equals("old") || !(phase.equals("planned") || phase.equals("expanded"));
        if (writes) {
            long id;
            try (PreparedStatement ps = c.prepareStatement(
                    "INSERT INTO " + table + " (" + col + ", note) VALUES (?, 'created')",
                    Statement.RETURN_GENERATED_KEYS)) {
                ps.setString(1, email(phase, n, 1));
                ps.executeUpdate();
                try (ResultSet keys = ps.getGeneratedKeys()) {
                    keys.next();
                    id = keys.getLong("id");
                    if (role.equals("old") && keys.getString("email") == null) throw new Exception("generated keys lack email");
                }
            }
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + table + " (" + col + ", note) VALUES (?, 'bulk')")) {
                for (int k = 2; k <= 4; k++) {
                    ps.setString(1, email(phase, n, k));
                    ps.addBatch();
                }
                ps.executeBatch();
            }
            try (PreparedStatement ps = c.prepareStatement("UPDATE " + table + " SET note = 'updated' WHERE " + col + " = ?")) {
                ps.setString(1, email(phase, n, 2));
                ps.executeUpdate();
            }
            try (PreparedStatement ps = c.prepareStatement("SELECT note FROM " + table + " WHERE " + col + " = ?")) {
                ps.setString(1, email(phase, n, 2));
                try (ResultSet rs = ps.executeQuery()) {
                    if (!rs.next() || !"updated".equals(rs.getString(1))) throw new Exception("get by unique field");
                }
            }
            int seed = 1 + n % 50;
            String variant = FOLDED.contains(phase) ? "seed" + seed + "@example.com" : "Seed" + seed + "@Example.COM";
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + table + " (" + col + ", note) VALUES (?, ?) "
                    + "ON CONFLICT (" + col + ") DO UPDATE SET note = EXCLUDED.note")) {
                ps.setString(1, variant);
                ps.setString(2, "upsert-" + n);
                ps.executeUpdate();
            }
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("UPDATE " + table + " SET note = 'committed' WHERE id = ?")) {
                ps.setLong(1, id);
                ps.executeUpdate();
            }
            c.commit();
            c.setAutoCommit(true);
        }
        // Distinct statements, so that a small cache evicts (and closes) some.
        for (int k = 0; k < 6; k++) {
            try (PreparedStatement ps = c.prepareStatement("SELECT " + col + " FROM " + table + " WHERE id = ? AND " + k + " = " + k)) {
                ps.setLong(1, 1 + k);
                ps.executeQuery().close();
            }
        }
        try (PreparedStatement ps = c.prepareStatement("SELECT id, " + col + " FROM " + table + " ORDER BY " + col + " LIMIT 5");
             ResultSet rs = ps.executeQuery()) {
            int rows = 0;
            while (rs.next()) rows++;
            if (rows != 5) throw new Exception("order by");
        }
        c.setAutoCommit(false);
        try (PreparedStatement ps = c.prepareStatement("SELECT id, " + col + " FROM " + table + " WHERE id <= ?")) {
            ps.setFetchSize(7);
            ps.setLong(1, 60);
            int seen = 0;
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) seen++;
            }
            if (seen < 50) throw new Exception("cursor saw " + seen);
        }
        c.commit();
        c.setAutoCommit(true);
        CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
        StringWriter out = new StringWriter();
        copy.copyOut("COPY (SELECT id, " + col + " FROM " + table + " WHERE id <= 60) TO STDOUT", out);
        StringWriter out2 = new StringWriter();
        copy.copyOut("COPY " + table + " (id, " + col + ") TO STDOUT", out2);
        if (out.toString().split("\n").length < 50 || out2.toString().split("\n").length < 50) throw new Exception("copy out");
    }
}
