package dev.gemmaedge.demo;

import dev.gemmaedge.core.ArtifactException;
import dev.gemmaedge.core.Manifest;
import dev.gemmaedge.core.Runtime;
import java.io.File;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.tensorflow.lite.Interpreter;

/**
 * Our .tflite through LiteRT's Interpreter (XNNPACK): {@code prefill_T} on whole chunks of T and
 * {@code decode} on the rest, {@code tokens}/{@code input_pos} int32, every state tensor in and out.
 * The state lives in two sets of direct buffers that swap after each call. LiteRT's signature runner
 * copies each state tensor in and out per call (the cost runtime_py/litert_session.py avoids with
 * tensor views, which the Java API does not expose).
 */
final class LiteRtRuntime implements Runtime {
    private final Interpreter interp;
    private final String prefill;
    private final int chunk;
    private final String[] names;
    private Map<String, ByteBuffer> cur = new HashMap<>(), next = new HashMap<>();
    private final ByteBuffer logits;

    LiteRtRuntime(Manifest m, int threads) {
        File f = new File(m.dir, m.modelFile);
        Interpreter.Options o = new Interpreter.Options().setNumThreads(threads).setUseXNNPACK(true);
        interp = new Interpreter(f, o);
        chunk = m.prefillChunk;
        prefill = chunk > 1 ? "prefill_" + chunk : null;
        if (prefill != null && !Arrays.asList(interp.getSignatureKeys()).contains(prefill)) {
            throw new ArtifactException(f + " has no signature " + prefill + " (prefill_chunk " + chunk + ")");
        }
        List<Object> ins = decodeInputs(m);
        names = new String[ins.size() - 2];
        for (int i = 2; i < ins.size(); i++) {
            String n = (String) ((Map<?, ?>) ins.get(i)).get("name");
            names[i - 2] = n;
            int bytes = interp.getInputTensorFromSignature(n, "decode").numBytes();
            cur.put(n, ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder()));
            next.put(n, ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder()));
        }
        logits = ByteBuffer.allocateDirect(m.vocabSize * 4).order(ByteOrder.nativeOrder());
    }

    @Override
    public float[] forward(int[] tokens, int start) {
        if (start == 0) { // a new sequence starts from zero state, as the Python session's does
            for (ByteBuffer b : cur.values()) {
                b.rewind();
                while (b.hasRemaining()) b.put((byte) 0);
            }
        }
        float[] out = null;
        for (int i = 0; i < tokens.length; ) {
            boolean whole = prefill != null && tokens.length - i >= chunk;
            int n = whole ? chunk : 1;
            out = run(whole ? prefill : "decode", Arrays.copyOfRange(tokens, i, i + n), start + i);
            i += n;
        }
        return out;
    }

    private float[] run(String sig, int[] tokens, int start) {
        ByteBuffer ids = ByteBuffer.allocateDirect(tokens.length * 4).order(ByteOrder.nativeOrder());
        ByteBuffer pos = ByteBuffer.allocateDirect(tokens.length * 4).order(ByteOrder.nativeOrder());
        for (int i = 0; i < tokens.length; i++) {
            ids.putInt(tokens[i]);
            pos.putInt(start + i);
        }
        ids.rewind();
        pos.rewind();
        Map<String, Object> in = new HashMap<>(), out = new HashMap<>();
        in.put("tokens", ids);
        in.put("input_pos", pos);
        for (String n : names) {
            cur.get(n).rewind();
            next.get(n).rewind();
            in.put(n, cur.get(n));
            out.put(n, next.get(n));
        }
        logits.rewind();
        out.put("logits", logits);
        interp.runSignature(in, out, sig);
        Map<String, ByteBuffer> t = cur;
        cur = next;
        next = t;
        logits.rewind();
        float[] l = new float[logits.capacity() / 4];
        logits.asFloatBuffer().get(l);
        return l;
    }

    @Override
    public void close() {
        interp.close();
    }

    private static List<Object> decodeInputs(Manifest m) {
        Object methods = m.json.get("methods");
        Object decode = ((Map<?, ?>) methods).get("decode");
        if (decode == null) throw new ArtifactException(m.dir + ": the manifest has no decode method");
        @SuppressWarnings("unchecked")
        List<Object> ins = (List<Object>) ((Map<?, ?>) decode).get("inputs");
        return ins;
    }
}
