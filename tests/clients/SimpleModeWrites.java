// Writes through pgjdbc in its simple query mode, which inlines each
// parameter into the text (a string as `('..')`, NULL as `(NULL)`).
// Usage: java -cp postgresql.jar:. SimpleModeWrites JDBC_URL TABLE OP...
// where OP is `i:ID:VALUE` (insert) or `u:ID:VALUE` (update), and a VALUE
// of `\N` is written as NULL.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.Types;

public class SimpleModeWrites {
    public static void main(String[] args) throws Exception {
        String url = args[0] + "&preferQueryMode=simple";
        try (Connection conn = DriverManager.getConnection(url)) {
            String table = args[1];
            PreparedStatement insert =
                conn.prepareStatement("insert into " + table + " (id, email) values (?, ?)");
            PreparedStatement update =
                conn.prepareStatement("update " + table + " set email = ? where id = ?");
            for (int k = 2; k < args.length; k++) {
                String[] op = args[k].split(":", 3);
                int id = Integer.parseInt(op[1]);
                boolean isInsert = op[0].equals("i");
                PreparedStatement st = isInsert ? insert : update;
                int idAt = isInsert ? 1 : 2;
                int valueAt = isInsert ? 2 : 1;
                st.setInt(idAt, id);
                if (op[2].equals("\\N")) {
                    st.setNull(valueAt, Types.VARCHAR);
                } else {
                    st.setString(valueAt, op[2]);
                }
                st.executeUpdate();
            }
        }
    }
}
