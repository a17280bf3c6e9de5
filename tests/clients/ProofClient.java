// A JDBC client for the zero-downtime proof: server-side prepared upserts
// and reads of its own ids (prepareThreshold=1) through the proxy until
// stdin closes. A lost connection (an injected fault) means reconnect; any
// other error, or a read that differs from what it wrote, exits non-zero.
// Usage: java -cp postgresql.jar:. ProofClient JDBC_URL BASE
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.Random;
import java.util.concurrent.atomic.AtomicBoolean;

public class ProofClient {
    public static void main(String[] args) throws Exception {
        String url = args[0];
        int base = Integer.parseInt(args[1]);
        AtomicBoolean stop = new AtomicBoolean(false);
        Thread watcher = new Thread(() -> {
            try {
                while (System.in.read() != -1) { }
            } catch (Exception e) { }
            stop.set(true);
        });
        watcher.setDaemon(true);
        watcher.start();
        Random rng = new Random(base);
        long ops = 0, reconnects = 0;
        Connection conn = null;
        while (!stop.get()) {
            try {
                if (conn == null) {
                    conn = DriverManager.getConnection(url);
                }
                PreparedStatement upsert = conn.prepareStatement(
                    "INSERT INTO items (id, qty, note) VALUES (?, ?, 'java') ON CONFLICT (id) DO UPDATE SET qty = excluded.qty");
                PreparedStatement read = conn.prepareStatement("SELECT qty FROM items WHERE id = ?");
                while (!stop.get()) {
                    int id = base + rng.nextInt(200);
                    int qty = rng.nextInt(1000000);
                    upsert.setInt(1, id);
                    upsert.setInt(2, qty);
                    upsert.executeUpdate();
                    read.setInt(1, id);
                    try (ResultSet rs = read.executeQuery()) {
                        if (!rs.next() || rs.getInt(1) != qty) {
                            System.out.println("MISMATCH " + id + ": wrote " + qty);
                            System.exit(2);
                        }
                    }
                    ops++;
                }
            } catch (SQLException e) {
                String state = e.getSQLState() == null ? "" : e.getSQLState();
                if (state.startsWith("08") || state.startsWith("57P")) {
                    reconnects++;
                    try {
                        if (conn != null) conn.close();
                    } catch (SQLException ignored) { }
                    conn = null;
                    Thread.sleep(50);
                    continue;
                }
                System.out.println("ERROR " + state + " " + e.getMessage());
                System.exit(1);
            }
        }
        System.out.println("ok " + ops + " " + reconnects);
    }
}
