package dev.gemmaedge.demo;

import android.app.Activity;
import android.os.Bundle;
import android.widget.ArrayAdapter;
import android.widget.Button;
import android.widget.CheckBox;
import android.widget.EditText;
import android.widget.Spinner;
import android.widget.TextView;
import dev.gemmaedge.core.ChatTemplate;
import dev.gemmaedge.core.Generator;
import dev.gemmaedge.core.Manifest;
import dev.gemmaedge.core.MemoryReadout;
import dev.gemmaedge.core.Runtime;
import dev.gemmaedge.core.Sampler;
import dev.gemmaedge.core.StreamDecoder;
import dev.gemmaedge.core.Tokenizer;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * Pick an artifact directory pushed with adb, check its manifest (every sha256), show the model and
 * recipe, generate from a prompt with streaming output, and show prefill/decode tok/s and memory.
 * Everything but the runtime call is in the core module, tested on the JVM against our Python runtime.
 */
public final class MainActivity extends Activity {
    /** Where `adb push` can put artifacts that the app can read without storage permissions. */
    private List<File> roots() {
        List<File> r = new ArrayList<>();
        File own = getExternalFilesDir(null);
        if (own != null) r.add(own);
        r.add(new File("/data/local/tmp/gemma-edge"));
        return r;
    }

    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    private final AtomicBoolean stop = new AtomicBoolean();
    private final List<File> artifacts = new ArrayList<>();
    private Manifest manifest;
    private Runtime runtime;
    private Tokenizer tokenizer;
    private TextView info, output, stats;
    private Button generate, stopButton;

    @Override
    protected void onCreate(Bundle saved) {
        super.onCreate(saved);
        setContentView(R.layout.activity_main);
        info = findViewById(R.id.model_info);
        output = findViewById(R.id.output);
        stats = findViewById(R.id.stats);
        generate = findViewById(R.id.generate);
        stopButton = findViewById(R.id.stop);
        Spinner spinner = findViewById(R.id.artifacts);
        List<String> labels = new ArrayList<>();
        for (File root : roots()) {
            File[] dirs = root.listFiles(d -> new File(d, Manifest.FILE).isFile());
            if (dirs == null) continue;
            for (File d : dirs) {
                artifacts.add(d);
                labels.add(d.getPath());
            }
        }
        if (artifacts.isEmpty()) info.setText(getString(R.string.no_artifacts, roots().get(0).getPath()));
        spinner.setAdapter(new ArrayAdapter<>(this, android.R.layout.simple_spinner_dropdown_item, labels));
        findViewById(R.id.load).setOnClickListener(v -> {
            int i = spinner.getSelectedItemPosition();
            if (i >= 0 && i < artifacts.size()) load(artifacts.get(i));
        });
        generate.setOnClickListener(v -> generate());
        stopButton.setOnClickListener(v -> stop.set(true));
    }

    private void load(File dir) {
        generate.setEnabled(false);
        info.setText("checking " + dir + " (sha256 of every file)…");
        worker.execute(() -> {
            try {
                if (runtime != null) runtime.close();
                runtime = null;
                Manifest m = Manifest.read(dir, true);
                File tok = m.tokenizerFile();
                if (tok == null) throw new IllegalStateException(dir + " has no tokenizer.model: the app needs text in and out");
                Tokenizer t = Tokenizer.load(tok);
                long t0 = System.nanoTime();
                Runtime r = Runtimes.open(m, Math.min(4, java.lang.Runtime.getRuntime().availableProcessors()));
                double loadS = (System.nanoTime() - t0) / 1e9;
                manifest = m;
                tokenizer = t;
                runtime = r;
                long bytes = new File(dir, m.modelFile).length();
                String text = String.format(Locale.ROOT,
                    "%s · %s · %s · ops %s\nmax_seq_len %d · prefill chunk %d · %s %s\nloaded in %.2f s · RSS %s",
                    m.family, m.backend, m.recipe, m.ops, m.maxSeqLen, m.prefillChunk, m.modelFile,
                    MemoryReadout.mib(bytes), loadS, MemoryReadout.mib(memory().rssBytes));
                runOnUiThread(() -> {
                    info.setText(text);
                    generate.setEnabled(true);
                });
            } catch (RuntimeException e) {
                runOnUiThread(() -> info.setText("cannot load " + dir + ":\n" + e.getMessage()));
            }
        });
    }

    private void generate() {
        String prompt = ((EditText) findViewById(R.id.prompt)).getText().toString();
        boolean chat = ((CheckBox) findViewById(R.id.chat)).isChecked();
        Sampler sampler;
        int maxNew;
        try {
            sampler = new Sampler(num(R.id.temperature), (int) num(R.id.top_k), num(R.id.top_p), (long) num(R.id.seed));
            maxNew = (int) num(R.id.max_new);
        } catch (IllegalArgumentException e) {
            stats.setText(e.getMessage());
            return;
        }
        Manifest m = manifest;
        Tokenizer tok = tokenizer;
        Runtime rt = runtime;
        List<Integer> ids = chat
            ? ChatTemplate.encode(tok, m.bos, m.family, Collections.singletonList(new ChatTemplate.Message("user", prompt)))
            : withBos(m.bos, tok.encode(prompt));
        output.setText("");
        stop.set(false);
        generate.setEnabled(false);
        stopButton.setEnabled(true);
        worker.execute(() -> {
            StreamDecoder stream = new StreamDecoder(tok);
            try {
                Generator.Result r = new Generator(rt, m).generate(ids, maxNew, sampler, m.stopTokens(tok), id -> {
                    String piece = stream.push(id);
                    if (!piece.isEmpty()) runOnUiThread(() -> output.append(piece));
                    return !stop.get();
                });
                MemoryReadout mem = memory();
                String s = String.format(Locale.ROOT,
                    "prompt %d tok · prefill %.1f tok/s (TTFT %.0f ms)\ndecode %d tok · %.1f tok/s · stop: %s\nRSS %s · peak %s",
                    r.promptTokens, r.prefillTokensPerSecond(), r.prefillNanos / 1e6, r.decodeSteps,
                    r.decodeTokensPerSecond(), r.stopReason, MemoryReadout.mib(mem.rssBytes), MemoryReadout.mib(mem.peakRssBytes));
                runOnUiThread(() -> stats.setText(s));
            } catch (RuntimeException e) {
                runOnUiThread(() -> stats.setText("generation failed: " + e.getMessage()));
            } finally {
                runOnUiThread(() -> {
                    generate.setEnabled(true);
                    stopButton.setEnabled(false);
                });
            }
        });
    }

    private static List<Integer> withBos(int bos, List<Integer> ids) {
        List<Integer> r = new ArrayList<>();
        if (bos >= 0) r.add(bos);
        r.addAll(ids);
        return r;
    }

    private double num(int id) {
        String s = ((EditText) findViewById(id)).getText().toString().trim();
        try {
            return Double.parseDouble(s);
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("'" + s + "' is not a number");
        }
    }

    private static MemoryReadout memory() {
        try {
            return MemoryReadout.parse(new String(Files.readAllBytes(Paths.get("/proc/self/status")), StandardCharsets.UTF_8));
        } catch (IOException e) {
            return MemoryReadout.parse("");
        }
    }

    @Override
    protected void onDestroy() {
        worker.execute(() -> {
            if (runtime != null) runtime.close();
        });
        worker.shutdown();
        super.onDestroy();
    }
}
