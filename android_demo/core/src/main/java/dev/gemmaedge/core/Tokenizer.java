package dev.gemmaedge.core;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.text.Normalizer;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.PriorityQueue;

/**
 * SentencePiece BPE (the model type of every Gemma tokenizer), read from {@code tokenizer.model}
 * without the native library: the protobuf's pieces, scores and types, its normalizer flags, byte
 * fallback and user-defined symbols. Encoding follows SentencePiece's BPE: user-defined symbols are
 * matched first and never merged, then the adjacent pair whose merge is a piece with the highest
 * score is merged (leftmost on ties) until none is left; a symbol that is not a piece becomes byte
 * pieces (byte fallback) or one unknown id for a run of unknowns. Checked against Python's
 * sentencepiece on the golden files.
 *
 * <p>Normalisation: the "identity" rule (Gemma's) is exact; an NFKC rule is approximated by
 * {@link java.text.Normalizer} plus the NMT whitespace and control-character rules (SentencePiece
 * applies a precompiled map, which can differ from Java's NFKC on rare characters).
 */
public final class Tokenizer {
    static final int NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6;
    private static final String SPACE = "\u2581";

    private final String[] pieces;
    private final float[] scores;
    private final int[] types;
    private final Map<String, Integer> ids = new HashMap<>(); // NORMAL, USER_DEFINED, UNUSED
    private final Map<String, Integer> reserved = new HashMap<>(); // CONTROL, UNKNOWN, BYTE
    private final List<String> userDefined = new ArrayList<>();
    private final int[] byteIds = new int[256];
    private int unkId = -1;
    private int maxUserLen = 0;
    private boolean byteFallback, addDummyPrefix = true, removeExtraWhitespaces = true, escapeWhitespaces = true;
    private String normalizer = "";
    private int modelType = 1;

    private Tokenizer(byte[] model, String where) {
        List<String> p = new ArrayList<>();
        List<Float> s = new ArrayList<>();
        List<Integer> t = new ArrayList<>();
        Proto r = new Proto(model, 0, model.length, where);
        while (r.more()) {
            int key = r.varint32();
            if (key == (1 << 3 | 2)) {
                Proto sp = r.message();
                String piece = "";
                float score = 0;
                int type = NORMAL;
                while (sp.more()) {
                    int k = sp.varint32();
                    if (k == (1 << 3 | 2)) piece = sp.string();
                    else if (k == (2 << 3 | 5)) score = sp.float32();
                    else if (k == (3 << 3)) type = (int) sp.varint();
                    else sp.skip(k);
                }
                p.add(piece);
                s.add(score);
                t.add(type);
            } else if (key == (2 << 3 | 2)) {
                Proto ts = r.message();
                while (ts.more()) {
                    int k = ts.varint32();
                    if (k == (3 << 3)) modelType = (int) ts.varint();
                    else if (k == (35 << 3)) byteFallback = ts.varint() != 0;
                    else if (k == (24 << 3) && ts.varint() != 0) throw new ArtifactException(where + ": treat_whitespace_as_suffix is not supported");
                    else ts.skip(k);
                }
            } else if (key == (3 << 3 | 2)) {
                Proto ns = r.message();
                while (ns.more()) {
                    int k = ns.varint32();
                    if (k == (1 << 3 | 2)) normalizer = ns.string();
                    else if (k == (3 << 3)) addDummyPrefix = ns.varint() != 0;
                    else if (k == (4 << 3)) removeExtraWhitespaces = ns.varint() != 0;
                    else if (k == (5 << 3)) escapeWhitespaces = ns.varint() != 0;
                    else ns.skip(k);
                }
            } else {
                r.skip(key);
            }
        }
        if (modelType != 2) throw new ArtifactException(where + ": SentencePiece model type " + modelType + " is not BPE (2), the type of Gemma's tokenizers");
        if (p.isEmpty()) throw new ArtifactException(where + ": the tokenizer has no pieces");
        pieces = p.toArray(new String[0]);
        scores = new float[pieces.length];
        types = new int[pieces.length];
        java.util.Arrays.fill(byteIds, -1);
        for (int i = 0; i < pieces.length; i++) {
            scores[i] = s.get(i);
            types[i] = t.get(i);
            if (types[i] == NORMAL || types[i] == USER_DEFINED || types[i] == UNUSED) ids.put(pieces[i], i);
            else reserved.put(pieces[i], i);
            if (types[i] == UNKNOWN) unkId = i;
            if (types[i] == USER_DEFINED) {
                userDefined.add(pieces[i]);
                maxUserLen = Math.max(maxUserLen, pieces[i].length());
            }
            if (types[i] == BYTE && pieces[i].length() == 6 && pieces[i].startsWith("<0x")) {
                byteIds[Integer.parseInt(pieces[i].substring(3, 5), 16)] = i;
            }
        }
        if (unkId < 0) throw new ArtifactException(where + ": the tokenizer has no unknown piece");
    }

    /** Load {@code tokenizer.model}; a file that is not a SentencePiece BPE model is an ArtifactException. */
    public static Tokenizer load(File f) {
        try {
            return new Tokenizer(Files.readAllBytes(f.toPath()), f.toString());
        } catch (IOException e) {
            throw new ArtifactException("cannot read tokenizer " + f + ": " + e.getMessage());
        }
    }

    public int vocabSize() {
        return pieces.length;
    }

    /** The id of a piece, or -1 when the vocabulary has no such piece. */
    public int pieceToId(String piece) {
        Integer id = ids.get(piece);
        if (id == null) id = reserved.get(piece);
        return id == null ? -1 : id;
    }

    public String idToPiece(int id) {
        return pieces[id];
    }

    /** Token ids of {@code text} (no BOS; the caller adds it), as SentencePiece's EncodeAsIds. */
    public List<Integer> encode(String text) {
        String norm = normalize(text);
        List<Integer> out = new ArrayList<>();
        if (norm.isEmpty()) return out;
        List<String> syms = new ArrayList<>();
        List<Boolean> frozen = new ArrayList<>();
        for (int i = 0; i < norm.length(); ) {
            int n = userDefinedAt(norm, i);
            boolean user = n > 0;
            if (!user) n = Character.charCount(norm.codePointAt(i));
            syms.add(norm.substring(i, i + n));
            frozen.add(user);
            i += n;
        }
        for (String piece : merge(syms, frozen)) emit(piece, out);
        return out;
    }

    private int userDefinedAt(String s, int i) {
        for (int n = Math.min(maxUserLen, s.length() - i); n > 0; n--) {
            Integer id = ids.get(s.substring(i, i + n));
            if (id != null && types[id] == USER_DEFINED) return n;
        }
        return 0;
    }

    private static final class Pair implements Comparable<Pair> {
        final int left, right;
        final float score;
        final String piece;

        Pair(int left, int right, float score, String piece) {
            this.left = left;
            this.right = right;
            this.score = score;
            this.piece = piece;
        }

        public int compareTo(Pair o) {
            if (score != o.score) return score > o.score ? -1 : 1;
            return Integer.compare(left, o.left);
        }
    }

    private List<String> merge(List<String> init, List<Boolean> frozen) {
        int n = init.size();
        String[] sym = init.toArray(new String[0]);
        int[] prev = new int[n], next = new int[n];
        for (int i = 0; i < n; i++) {
            prev[i] = i - 1;
            next[i] = i + 1 < n ? i + 1 : -1;
        }
        PriorityQueue<Pair> agenda = new PriorityQueue<>();
        for (int i = 0; i + 1 < n; i++) addPair(agenda, sym, frozen, i, i + 1);
        while (!agenda.isEmpty()) {
            Pair top = agenda.poll();
            if (sym[top.left] == null || sym[top.right] == null) continue;
            if (!(sym[top.left] + sym[top.right]).equals(top.piece)) continue; // stale entry
            sym[top.left] = top.piece;
            sym[top.right] = null;
            next[top.left] = next[top.right];
            if (next[top.right] >= 0) prev[next[top.right]] = top.left;
            if (prev[top.left] >= 0) addPair(agenda, sym, frozen, prev[top.left], top.left);
            if (next[top.left] >= 0) addPair(agenda, sym, frozen, top.left, next[top.left]);
        }
        List<String> out = new ArrayList<>();
        for (int i = 0; i >= 0 && i < n; i = next[i]) out.add(sym[i]);
        return out;
    }

    private void addPair(PriorityQueue<Pair> agenda, String[] sym, List<Boolean> frozen, int l, int r) {
        if (frozen.get(l) || frozen.get(r)) return;
        String piece = sym[l] + sym[r];
        Integer id = ids.get(piece);
        if (id == null) return;
        agenda.add(new Pair(l, r, scores[id], piece));
    }

    private void emit(String piece, List<Integer> out) {
        Integer id = ids.get(piece);
        if (id == null) id = reserved.get(piece);
        if (id != null) {
            out.add(id);
            return;
        }
        if (byteFallback) {
            for (byte b : piece.getBytes(StandardCharsets.UTF_8)) out.add(byteIds[b & 0xff]);
            return;
        }
        if (out.isEmpty() || out.get(out.size() - 1) != unkId) out.add(unkId); // a run of unknowns is one id
    }

    String normalize(String text) {
        String t = normalizer.startsWith("nmt_nfkc") || normalizer.startsWith("nfkc")
            ? Normalizer.normalize(text, Normalizer.Form.NFKC) : text;
        if (normalizer.startsWith("nmt_")) { // NMT rules: tab, newline, CR, VT, FF are spaces; other controls go
            StringBuilder b = new StringBuilder();
            for (int i = 0; i < t.length(); i++) {
                char c = t.charAt(i);
                if (c >= 0x09 && c <= 0x0d) b.append(' ');
                else if (!(c < 0x20 || (c >= 0x7f && c <= 0x9f))) b.append(c);
            }
            t = b.toString();
        }
        if (removeExtraWhitespaces) {
            StringBuilder b = new StringBuilder();
            for (int i = 0; i < t.length(); i++) {
                char c = t.charAt(i);
                if (c == ' ' && (b.length() == 0 || b.charAt(b.length() - 1) == ' ')) continue;
                b.append(c);
            }
            while (b.length() > 0 && b.charAt(b.length() - 1) == ' ') b.setLength(b.length() - 1);
            t = b.toString();
        }
        if (t.isEmpty()) return t;
        if (addDummyPrefix) t = " " + t;
        return escapeWhitespaces ? t.replace(" ", SPACE) : t;
    }

    /** Text of ids, as SentencePiece's DecodeIds: control ids vanish, bytes join into UTF-8. */
    public String decode(List<Integer> tokens) {
        StringBuilder b = new StringBuilder();
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        boolean first = true;
        for (int id : tokens) {
            if (id < 0 || id >= pieces.length) throw new IllegalArgumentException("token id " + id + " is out of range 0.." + (pieces.length - 1));
            if (types[id] == BYTE) {
                bytes.write(Integer.parseInt(pieces[id].substring(3, 5), 16));
                continue;
            }
            flush(bytes, b);
            if (types[id] == CONTROL) continue;
            String s = types[id] == UNKNOWN ? " \u2047 " : pieces[id].replace(SPACE, " ");
            if (first && addDummyPrefix && s.startsWith(" ")) s = s.substring(1);
            first = false;
            b.append(s);
        }
        flush(bytes, b);
        return b.toString();
    }

    private static void flush(ByteArrayOutputStream bytes, StringBuilder b) {
        if (bytes.size() == 0) return;
        b.append(new String(bytes.toByteArray(), StandardCharsets.UTF_8));
        bytes.reset();
    }

    /** A protobuf reader over one message's bytes (no library: the core has no dependencies). */
    private static final class Proto {
        private final byte[] b;
        private int i;
        private final int end;
        private final String where;

        Proto(byte[] b, int start, int end, String where) {
            this.b = b;
            this.i = start;
            this.end = end;
            this.where = where;
        }

        boolean more() {
            return i < end;
        }

        private ArtifactException bad() {
            return new ArtifactException(where + " is not a valid SentencePiece model (truncated protobuf at byte " + i + ")");
        }

        long varint() {
            long v = 0;
            for (int shift = 0; shift < 64; shift += 7) {
                if (i >= end) throw bad();
                byte x = b[i++];
                v |= (long) (x & 0x7f) << shift;
                if (x >= 0) return v;
            }
            throw bad();
        }

        int varint32() {
            return (int) varint();
        }

        Proto message() {
            int n = varint32();
            if (n < 0 || i + n > end) throw bad();
            Proto p = new Proto(b, i, i + n, where);
            i += n;
            return p;
        }

        String string() {
            int n = varint32();
            if (n < 0 || i + n > end) throw bad();
            String s = new String(b, i, n, StandardCharsets.UTF_8);
            i += n;
            return s;
        }

        float float32() {
            if (i + 4 > end) throw bad();
            float f = ByteBuffer.wrap(b, i, 4).order(ByteOrder.LITTLE_ENDIAN).getFloat();
            i += 4;
            return f;
        }

        void skip(int key) {
            switch (key & 7) {
                case 0: varint(); break;
                case 1: i += 8; break;
                case 2: { int n = varint32(); if (n < 0) throw bad(); i += n; break; }
                case 5: i += 4; break;
                default: throw bad();
            }
            if (i > end) throw bad();
        }
    }
}
