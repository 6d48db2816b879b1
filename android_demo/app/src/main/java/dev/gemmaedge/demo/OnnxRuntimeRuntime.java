package dev.gemmaedge.demo;

import ai.onnxruntime.OnnxJavaType;
import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OnnxValue;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import dev.gemmaedge.core.ArtifactException;
import dev.gemmaedge.core.Manifest;
import dev.gemmaedge.core.Runtime;
import java.io.File;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.LongBuffer;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * Our .onnx (or .ort) through ONNX Runtime's Java API, as runtime_py/onnx_session.py drives it: each
 * {@code past_*} input and its {@code present.*} output are the same tensor (a pinned output), so a step
 * writes the caches in place; {@code attention_mask}'s length gives the position.
 */
final class OnnxRuntimeRuntime implements Runtime {
    private final OrtEnvironment env = OrtEnvironment.getEnvironment();
    private final OrtSession session;
    private final Map<String, OnnxTensor> state = new HashMap<>();
    private final Map<String, OnnxTensor> pinned = new HashMap<>();

    OnnxRuntimeRuntime(Manifest m, int threads) {
        String file = m.files.containsKey("model.ort") ? "model.ort" : m.modelFile;
        try {
            OrtSession.SessionOptions opts = new OrtSession.SessionOptions();
            opts.setIntraOpNumThreads(threads);
            opts.setInterOpNumThreads(1);
            session = env.createSession(new File(m.dir, file).getPath(), opts);
            List<Object> ins = sig(m, "inputs"), outs = sig(m, "outputs");
            for (int i = 2; i < ins.size(); i++) { // input_ids, attention_mask, then the state, paired in order
                Map<String, Object> in = cast(ins.get(i));
                String past = (String) in.get("name"), present = (String) cast(outs.get(i - 1)).get("name");
                long[] shape = shape(in, m);
                OnnxTensor t = zeros(shape, (String) in.get("dtype"), m);
                state.put(past, t);
                pinned.put(present, t);
            }
        } catch (OrtException e) {
            throw new ArtifactException("ONNX Runtime could not load " + new File(m.dir, file) + ": " + e.getMessage());
        }
    }

    @Override
    public float[] forward(int[] tokens, int start) {
        long[] ids = new long[tokens.length];
        for (int i = 0; i < ids.length; i++) ids[i] = tokens[i];
        long[] mask = new long[start + ids.length];
        java.util.Arrays.fill(mask, 1L);
        try (OnnxTensor inputIds = OnnxTensor.createTensor(env, LongBuffer.wrap(ids), new long[] {1, ids.length});
             OnnxTensor attention = OnnxTensor.createTensor(env, LongBuffer.wrap(mask), new long[] {1, mask.length})) {
            Map<String, OnnxTensor> feeds = new HashMap<>(state);
            feeds.put("input_ids", inputIds);
            feeds.put("attention_mask", attention);
            try (OrtSession.Result r = session.run(feeds, Collections.singleton("logits"), pinned)) {
                OnnxValue v = r.get("logits").orElseThrow(() -> new IllegalStateException("no logits output"));
                FloatBuffer fb = ((OnnxTensor) v).getFloatBuffer();
                float[] logits = new float[fb.remaining()];
                fb.get(logits);
                return logits;
            }
        } catch (OrtException e) {
            throw new IllegalStateException("ONNX Runtime failed at position " + start + ": " + e.getMessage(), e);
        }
    }

    @Override
    public void close() {
        for (OnnxTensor t : state.values()) t.close();
        try {
            session.close();
        } catch (OrtException e) {
            throw new IllegalStateException(e);
        }
    }

    private OnnxTensor zeros(long[] shape, String dtype, Manifest m) throws OrtException {
        long n = 1;
        for (long d : shape) n *= d;
        boolean half = "float16".equals(dtype);
        if (!half && !"float32".equals(dtype)) throw new ArtifactException(m.dir + ": state dtype " + dtype + " is not float32/float16");
        ByteBuffer b = ByteBuffer.allocateDirect((int) (n * (half ? 2 : 4))).order(ByteOrder.nativeOrder());
        return OnnxTensor.createTensor(env, b, shape, half ? OnnxJavaType.FLOAT16 : OnnxJavaType.FLOAT);
    }

    private static long[] shape(Map<String, Object> t, Manifest m) {
        List<Object> dims = listOf(t.get("shape"));
        long[] s = new long[dims.size()];
        for (int i = 0; i < s.length; i++) {
            if (!(dims.get(i) instanceof Long)) throw new ArtifactException(m.dir + ": state " + t.get("name") + " has a dynamic shape");
            s[i] = (Long) dims.get(i);
        }
        return s;
    }

    private static List<Object> sig(Manifest m, String key) {
        return listOf(cast(cast(m.json.get("methods")).get("forward")).get(key));
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> cast(Object o) {
        return (Map<String, Object>) o;
    }

    @SuppressWarnings("unchecked")
    private static List<Object> listOf(Object o) {
        return (List<Object>) o;
    }
}
