package dev.gemmaedge.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/**
 * The Java loop against the Python Session: a fake Runtime replays the calls the Session made on
 * the tiny ONNX artifact, failing on any call that differs (tokens, chunking, position), and the
 * Java sampler must choose the tokens the Python sampler chose from the same logits.
 */
public class GoldenGenerationTest {
    /** Replays recorded runtime calls; any other call is a test failure. */
    static final class Replay implements Runtime {
        final List<Object> calls;
        int next = 0;

        Replay(List<Object> calls) {
            this.calls = calls;
        }

        @Override
        public float[] forward(int[] tokens, int start) {
            assertTrue("the Java loop made more runtime calls (" + (next + 1) + ") than the Python Session (" + calls.size() + ")",
                next < calls.size());
            Map<String, Object> c = Golden.map(calls.get(next));
            assertArrayEquals("tokens of runtime call " + next, Golden.intArray(c.get("tokens")), tokens);
            assertEquals("start position of runtime call " + next, (long) (Long) c.get("start"), start);
            next++;
            return Golden.floats(c.get("logits"));
        }

        @Override
        public void close() {}
    }

    private Manifest manifest() {
        return Manifest.read(new File(Golden.DIR, (String) Golden.JSON.get("artifact")), true);
    }

    @Test
    public void everyRecordedGenerationIsReproduced() {
        Manifest m = manifest();
        List<Object> gens = Golden.list(Golden.JSON.get("generations"));
        assertTrue(gens.size() >= 6);
        for (int g = 0; g < gens.size(); g++) {
            Map<String, Object> gen = Golden.map(gens.get(g));
            Map<String, Object> s = Golden.map(gen.get("sampler"));
            Object seed = s.get("seed");
            Sampler sampler = new Sampler(((Number) s.get("temperature")).doubleValue(), (int) (long) (Long) s.get("top_k"),
                ((Number) s.get("top_p")).doubleValue(), seed == null ? 0 : (Long) seed);
            Replay rt = new Replay(Golden.list(gen.get("calls")));
            Generator.Result r = new Generator(rt, m).generate(Golden.ints(gen.get("prompt")),
                (int) (long) (Long) gen.get("max_new_tokens"), sampler, Golden.ints(gen.get("stop_tokens")), null);
            assertEquals("generation " + g + " (" + s + ")", Golden.ints(gen.get("output")), r.tokens);
            assertEquals("generation " + g + ": runtime calls", rt.calls.size(), rt.next);
        }
    }

    @Test
    public void theArtifactsManifestIsRead() {
        Manifest m = manifest();
        assertEquals("onnx", m.backend);
        assertEquals("gemma3", m.family);
        assertEquals(8, m.prefillChunk);
        assertEquals(64, m.maxSeqLen);
        assertEquals("fp32", m.recipe);
        assertTrue(m.eos.contains(1));
        assertEquals(2, m.bos);
        assertEquals(Tokenizer.load(m.tokenizerFile()).vocabSize(), m.vocabSize);
    }

    @Test
    public void everyDefectPythonRefusesIsRefused() {
        List<Object> cases = Golden.list(Golden.JSON.get("defects"));
        assertTrue(cases.size() >= 7);
        for (Object o : cases) {
            Map<String, Object> c = Golden.map(o);
            File d = new File(Golden.DIR, (String) c.get("dir"));
            try {
                Manifest.read(d, true);
            } catch (ArtifactException e) {
                String words = (String) c.get("words");
                assertTrue(d + ": the error should say '" + words + "' (Python: " + c.get("python_error") + "), got: " + e.getMessage(),
                    e.getMessage().contains(words));
                continue;
            }
            throw new AssertionError(d + " was accepted; Python refuses it: " + c.get("python_error"));
        }
    }
}
