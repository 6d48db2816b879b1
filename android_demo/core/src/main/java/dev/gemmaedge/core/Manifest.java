package dev.gemmaedge.core;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

/**
 * An artifact directory's {@code manifest.json}, read with the same rules as the Python runtime
 * (runtime_py/manifest.py): format version 1, the required keys with their types, the stop
 * tokens, and every file of the directory listed and matching its sha256. Anything else is an
 * {@link ArtifactException} that names the file and the key.
 */
public final class Manifest {
    public static final int FORMAT_VERSION = 1;
    public static final String FILE = "manifest.json";
    private static final String[][] REQUIRED = {
        {"format_version", "int"}, {"backend", "str"}, {"model_file", "str"}, {"files", "dict"},
        {"config", "dict"}, {"max_seq_len", "int"}, {"special_tokens", "dict"}, {"methods", "dict"},
        {"recipe", "dict"}, {"ops", "str"},
    };

    public final File dir;
    public final Map<String, Object> json;
    public final String backend;
    public final String modelFile;
    public final String family;
    public final String recipe;
    public final String ops;
    public final int vocabSize;
    public final int maxSeqLen;
    public final int prefillChunk;
    public final int bos;
    public final List<Integer> eos;
    public final Map<String, String> files;

    private Manifest(File dir, Map<String, Object> m, File f) {
        this.dir = dir;
        this.json = m;
        backend = (String) m.get("backend");
        modelFile = (String) m.get("model_file");
        ops = (String) m.get("ops");
        Map<String, Object> cfg = obj(m.get("config"));
        family = str(cfg.get("family"), f, "config.family");
        vocabSize = positive(cfg.get("vocab_size"), f, "config.vocab_size");
        maxSeqLen = positive(m.get("max_seq_len"), f, "max_seq_len");
        prefillChunk = m.containsKey("prefill_chunk") ? positive(m.get("prefill_chunk"), f, "prefill_chunk") : 1;
        Map<String, Object> special = obj(m.get("special_tokens"));
        Object eosList = special.get("eos");
        if (!(eosList instanceof List) || ((List<?>) eosList).isEmpty()) {
            throw new ArtifactException(f + ": special_tokens.eos must be a non-empty list of token ids, got " + eosList);
        }
        List<Integer> e = new ArrayList<>();
        for (Object t : (List<?>) eosList) e.add(tokenId(t, f, "special_tokens.eos"));
        eos = Collections.unmodifiableList(e);
        bos = special.containsKey("bos") ? tokenId(special.get("bos"), f, "special_tokens.bos") : -1;
        recipe = str(obj(m.get("recipe")).get("name"), f, "recipe.name");
        Map<String, String> fl = new LinkedHashMap<>();
        for (Map.Entry<String, Object> en : obj(m.get("files")).entrySet()) {
            if (!(en.getValue() instanceof String)) {
                throw new ArtifactException(f + ": 'files' must map file names to sha256 hex digests ("
                    + en.getKey() + " maps to " + en.getValue() + ")");
            }
            fl.put(en.getKey(), (String) en.getValue());
        }
        files = Collections.unmodifiableMap(fl);
        if (!files.containsKey(modelFile)) {
            throw new ArtifactException(f + ": model_file '" + modelFile + "' is not in 'files', so it would not be hashed");
        }
        for (Map.Entry<String, Object> en : obj(m.get("methods")).entrySet()) checkMethod(en.getKey(), en.getValue(), f);
    }

    /** Read and check {@code dir/manifest.json}, and (when {@code checkFiles}) every file's sha256. */
    public static Manifest read(File dir, boolean checkFiles) {
        if (!dir.isDirectory()) throw new ArtifactException("artifact directory " + dir + " does not exist");
        File f = new File(dir, FILE);
        if (!f.isFile()) throw new ArtifactException(dir + " is not an artifact: " + FILE + " is missing");
        Object parsed;
        try {
            parsed = Json.parse(new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8));
        } catch (IOException | IllegalArgumentException e) {
            throw new ArtifactException(f + " is not valid JSON: " + e.getMessage());
        }
        if (!(parsed instanceof Map)) throw new ArtifactException(f + ": expected a JSON object");
        Map<String, Object> m = obj(parsed);
        Object version = m.get("format_version");
        if (!(version instanceof Long) || (Long) version != FORMAT_VERSION) {
            throw new ArtifactException(f + ": format_version " + version + ", this app reads " + FORMAT_VERSION);
        }
        List<String> missing = new ArrayList<>();
        List<String> wrong = new ArrayList<>();
        for (String[] r : REQUIRED) {
            if (!m.containsKey(r[0])) missing.add(r[0]);
            else if (!typeIs(m.get(r[0]), r[1])) wrong.add(r[0] + " (expected " + r[1] + ")");
        }
        if (!missing.isEmpty()) throw new ArtifactException(f + ": missing required keys " + String.join(", ", missing));
        if (!wrong.isEmpty()) throw new ArtifactException(f + ": wrong types: " + String.join(", ", wrong));
        Manifest man = new Manifest(dir, m, f);
        if (checkFiles) man.checkFiles();
        return man;
    }

    private void checkFiles() {
        TreeSet<String> unlisted = new TreeSet<>();
        String[] names = dir.list();
        for (String n : names == null ? new String[0] : names) {
            if (new File(dir, n).isFile() && !n.equals(FILE) && !n.startsWith(".") && !files.containsKey(n)) unlisted.add(n);
        }
        if (!unlisted.isEmpty()) {
            throw new ArtifactException(dir + ": files not in the manifest (not hashed, refused): " + String.join(", ", unlisted));
        }
        for (Map.Entry<String, String> en : files.entrySet()) {
            String name = en.getKey();
            if (name.contains("/") || name.contains("\\") || name.equals("..") || name.equals(".")) {
                throw new ArtifactException(new File(dir, FILE) + ": 'files' names '" + name + "', which is not a file of the artifact directory");
            }
            File p = new File(dir, name);
            if (!p.isFile()) throw new ArtifactException("artifact file " + p + " is missing");
            if (!sha256(p).equals(en.getValue())) {
                throw new ArtifactException("artifact file " + p + " does not match its sha256 in " + FILE + ": tampered or truncated");
            }
        }
    }

    /** Hex sha256 of a file, streamed (model files are hundreds of MB). */
    public static String sha256(File p) {
        try (InputStream in = new FileInputStream(p)) {
            MessageDigest d = MessageDigest.getInstance("SHA-256");
            byte[] buf = new byte[1 << 20];
            for (int n; (n = in.read(buf)) > 0; ) d.update(buf, 0, n);
            StringBuilder b = new StringBuilder();
            for (byte x : d.digest()) b.append(String.format("%02x", x));
            return b.toString();
        } catch (IOException e) {
            throw new ArtifactException("cannot read artifact file " + p + ": " + e.getMessage());
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    /** The tokenizer file, when the artifact ships one. */
    public File tokenizerFile() {
        return files.containsKey("tokenizer.model") ? new File(dir, "tokenizer.model") : null;
    }

    /** Stop tokens: the manifest's eos plus Gemma's end-of-turn when the tokenizer has it. */
    public List<Integer> stopTokens(Tokenizer tok) {
        List<Integer> s = new ArrayList<>(eos);
        int eot = tok == null ? -1 : tok.pieceToId("<end_of_turn>");
        if (eot >= 0 && !s.contains(eot)) s.add(eot);
        return s;
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> obj(Object o) {
        return (Map<String, Object>) o;
    }

    private static boolean typeIs(Object v, String t) {
        switch (t) {
            case "int": return v instanceof Long;
            case "str": return v instanceof String;
            default: return v instanceof Map;
        }
    }

    private static String str(Object v, File f, String key) {
        if (!(v instanceof String)) throw new ArtifactException(f + ": " + key + " must be a string, got " + v);
        return (String) v;
    }

    private static int positive(Object v, File f, String key) {
        if (!(v instanceof Long) || (Long) v < 1 || (Long) v > Integer.MAX_VALUE) {
            throw new ArtifactException(f + ": " + key + " must be an integer >= 1, got " + v);
        }
        return (int) (long) (Long) v;
    }

    private static int tokenId(Object v, File f, String key) {
        if (!(v instanceof Long) || (Long) v < 0 || (Long) v > Integer.MAX_VALUE) {
            throw new ArtifactException(f + ": " + key + " must hold token ids (integers >= 0), got " + v);
        }
        return (int) (long) (Long) v;
    }

    private static void checkMethod(String name, Object sig, File f) {
        boolean ok = sig instanceof Map;
        for (String k : Arrays.asList("inputs", "outputs")) {
            if (!ok) break;
            Object l = obj(sig).get(k);
            ok = l instanceof List;
            for (Object t : ok ? (List<?>) l : Collections.emptyList()) {
                ok &= t instanceof Map && obj(t).get("name") instanceof String;
            }
        }
        if (!ok) throw new ArtifactException(f + ": methods." + name + " must have 'inputs' and 'outputs' lists of named tensors");
    }
}
