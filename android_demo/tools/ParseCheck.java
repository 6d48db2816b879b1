import com.sun.source.util.JavacTask;
import java.util.ArrayList;
import java.util.List;
import javax.tools.Diagnostic;
import javax.tools.DiagnosticCollector;
import javax.tools.JavaCompiler;
import javax.tools.JavaFileObject;
import javax.tools.StandardJavaFileManager;
import javax.tools.ToolProvider;

/**
 * Parse (not compile) Java sources: the app module's code needs android.jar and the runtimes' AARs,
 * which this machine cannot have, so its syntax is what can be checked here.
 * usage: java tools/ParseCheck.java FILE.java ...
 */
public class ParseCheck {
    public static void main(String[] args) throws Exception {
        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        DiagnosticCollector<JavaFileObject> diags = new DiagnosticCollector<>();
        StandardJavaFileManager fm = javac.getStandardFileManager(diags, null, null);
        List<String> opts = new ArrayList<>(List.of("--release", "11"));
        JavacTask task = (JavacTask) javac.getTask(null, fm, diags, opts, null, fm.getJavaFileObjects(args));
        int trees = 0;
        for (Object t : task.parse()) trees++;
        int errors = 0;
        for (Diagnostic<? extends JavaFileObject> d : diags.getDiagnostics()) {
            System.err.println(d);
            if (d.getKind() == Diagnostic.Kind.ERROR) errors++;
        }
        System.out.println("parsed " + trees + " files, " + errors + " syntax errors");
        System.exit(errors == 0 && trees == args.length ? 0 : 1);
    }
}
