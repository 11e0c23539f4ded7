// pgJDBC with ssl=true (verify-full against the given root certificate), run as a
// single-file program: java -cp postgresql.jar Login.java host port user password ca_file.
// Prints `<current_user> <upstream ssl>`.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

public class Login {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/postgres";
        Properties props = new Properties();
        props.setProperty("user", args[2]);
        props.setProperty("password", args[3]);
        props.setProperty("ssl", "true");
        props.setProperty("sslmode", "verify-full");
        props.setProperty("sslrootcert", args[4]);
        props.setProperty("connectTimeout", "10");
        try (Connection conn = DriverManager.getConnection(url, props);
             Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery(
                 "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")) {
            rs.next();
            System.out.println(rs.getString(1) + " " + (rs.getBoolean(2) ? "t" : "f"));
        } catch (SQLException e) {
            System.err.println(e.getSQLState() + " " + e.getMessage());
            System.exit(1);
        }
    }
}
