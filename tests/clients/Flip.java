// Executes one server-side prepared INSERT once per line read from stdin and
// prints the new row's id, so that a test can flip routing rules between
// executions. Usage: java -cp postgresql.jar:. Flip JDBC_URL
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;

public class Flip {
    public static void main(String[] args) throws Exception {
        try (Connection conn = DriverManager.getConnection(args[0])) {
            PreparedStatement insert = conn.prepareStatement("insert into users(email) values (?) returning id");
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
            String line;
            while ((line = in.readLine()) != null) {
                insert.setString(1, line);
                try (ResultSet rs = insert.executeQuery()) {
                    rs.next();
                    System.out.println(rs.getInt(1));
                    System.out.flush();
                }
            }
        }
    }
}
