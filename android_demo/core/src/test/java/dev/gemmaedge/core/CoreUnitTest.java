package dev.gemmaedge.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** The core's own rules: errors, cancellation, timing, JSON, the chat format's edge cases. */
public class CoreUnitTest {
    /** Logits that always favour token (position + 1) % vocab, so the sequence is known. */
    static final class Counting implements Runtime {
        final int vocab;
        final List<int[]> calls = new ArrayList<>();

        Counting(int vocab) {
            this.vocab = vocab;
        }

        @Override
        public float[] forward(int[] tokens, int start) {
            calls.add(new int[] {tokens.length, start});
            float[] l = new float[vocab];
            l[(start + tokens.length) % vocab] = 5f;
            return l;
        }

        @Override
        public void close() {}
    }

    @Test
    public void splitMix64MatchesItsReferenceSequence() {
        SplitMix64 r = new SplitMix64(0); // Vigna's splitmix64.c from state 0
        assertEquals(0xe220a8397b1dcdafL, r.nextLong());
        assertEquals(0x6e789e6aa1b965f4L, r.nextLong());
        assertEquals(0x06c45d188009454fL, r.nextLong());
    }

    @Test
    public void samplerRefusesBadSettings() {
        assertThrows(IllegalArgumentException.class, () -> new Sampler(-1, 0, 1, 0));
        assertThrows(IllegalArgumentException.class, () -> new Sampler(Double.NaN, 0, 1, 0));
        assertThrows(IllegalArgumentException.class, () -> new Sampler(1, -1, 1, 0));
        assertThrows(IllegalArgumentException.class, () -> new Sampler(1, 0, 0, 0));
        assertThrows(IllegalArgumentException.class, () -> new Sampler(1, 0, 1.5, 0));
    }

    @Test
    public void topKOneIsGreedyAndTopPKeepsTheHead() {
        float[] l = {0.1f, 3f, 2.9f, -1f};
        Sampler k1 = new Sampler(1.0, 1, 1.0, 42);
        Sampler p = new Sampler(1.0, 0, 0.01, 42);
        for (int i = 0; i < 50; i++) {
            assertEquals(1, k1.sample(l));
            assertEquals(1, p.sample(l));
        }
        Sampler wide = new Sampler(5.0, 2, 1.0, 1);
        boolean saw2 = false;
        for (int i = 0; i < 200; i++) {
            int t = wide.sample(l);
            assertTrue(t == 1 || t == 2);
            saw2 |= t == 2;
        }
        assertTrue(saw2);
    }

    @Test
    public void generatorChunksStopsAndTimes() {
        Counting rt = new Counting(50);
        long[] now = {0};
        Generator g = new Generator(rt, 50, 40, 4, () -> now[0] += 1_000_000); // every clock read is 1 ms later
        List<Integer> prompt = Arrays.asList(2, 3, 4, 5, 6, 7, 8, 9, 10, 11);
        Generator.Result r = g.generate(prompt, 5, Sampler.greedy(), Collections.singletonList(1), null);
        assertEquals(Arrays.asList(10, 11, 12, 13, 14), r.tokens);
        assertEquals("max_new_tokens", r.stopReason);
        assertEquals(4, rt.calls.get(0)[0]);
        assertEquals(2, rt.calls.get(2)[0]); // 4 + 4 + 2
        assertEquals(8, rt.calls.get(2)[1]);
        assertEquals(4, r.decodeSteps);
        assertEquals(10 / 1e-3, r.prefillTokensPerSecond(), 1e-6);
        assertEquals(1000.0, r.decodeTokensPerSecond(), 1e-6);
        Generator.Result stop = g.generate(prompt, 10, Sampler.greedy(), Collections.singletonList(12), null);
        assertEquals(Arrays.asList(10, 11, 12), stop.tokens);
        assertEquals("stop token", stop.stopReason);
        int[] seen = {0};
        Generator.Result cancel = g.generate(prompt, 10, Sampler.greedy(), Collections.emptyList(), id -> ++seen[0] < 2);
        assertEquals(2, cancel.tokens.size());
        assertEquals("cancelled", cancel.stopReason);
        Generator.Result full = g.generate(new ArrayList<>(Collections.nCopies(38, 3)), 10, Sampler.greedy(),
            Collections.emptyList(), null);
        assertEquals(2, full.tokens.size()); // positions 38 and 39 fill max_seq_len 40
        assertEquals("max_seq_len", full.stopReason);
    }

    @Test
    public void generatorRefusesBadInput() {
        Generator g = new Generator(new Counting(50), 50, 16, 4, System::nanoTime);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
            () -> g.generate(Arrays.asList(2, 50), 4, Sampler.greedy(), Collections.emptyList(), null));
        assertTrue(e.getMessage(), e.getMessage().contains("token id 50 is out of range"));
        e = assertThrows(IllegalArgumentException.class,
            () -> g.generate(new ArrayList<>(Collections.nCopies(17, 3)), 4, Sampler.greedy(), Collections.emptyList(), null));
        assertTrue(e.getMessage(), e.getMessage().contains("exceed this artifact's max_seq_len of 16"));
        assertThrows(IllegalArgumentException.class,
            () -> g.generate(Collections.emptyList(), 4, Sampler.greedy(), Collections.emptyList(), null));
        Runtime three = new Runtime() {
            @Override
            public float[] forward(int[] tokens, int start) {
                return new float[3];
            }

            @Override
            public void close() {}
        };
        Generator bad = new Generator(three, 50, 16, 4, System::nanoTime);
        IllegalStateException s = assertThrows(IllegalStateException.class, () -> bad.prefill(Arrays.asList(1, 2)));
        assertTrue(s.getMessage(), s.getMessage().contains("returned 3 logits, expected vocab_size 50"));
    }

    @Test
    public void chatTemplateFoldsTheSystemTurnAndChecksRoles() {
        List<ChatTemplate.Message> m = Arrays.asList(new ChatTemplate.Message("system", "Be brief."),
            new ChatTemplate.Message("user", "Hi"));
        assertEquals("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n", ChatTemplate.render("gemma3", m));
        assertThrows(IllegalArgumentException.class, () -> ChatTemplate.render("gemma2", m));
        assertThrows(IllegalArgumentException.class, () -> ChatTemplate.render("gemma3",
            Arrays.asList(new ChatTemplate.Message("user", "a"), new ChatTemplate.Message("user", "b"))));
        assertThrows(IllegalArgumentException.class, () -> ChatTemplate.render("gemma3",
            Arrays.asList(new ChatTemplate.Message("user", "a"), new ChatTemplate.Message("assistant", "b"))));
    }

    @Test
    public void memoryReadoutParsesProcStatus() {
        MemoryReadout m = MemoryReadout.parse("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t4\n");
        assertEquals(1024L * 1024, m.rssBytes);
        assertEquals(2048L * 1024, m.peakRssBytes);
        assertEquals(-1, MemoryReadout.parse("Name:\tx\n").rssBytes);
        assertEquals("1 MiB", MemoryReadout.mib(m.rssBytes));
    }

    @Test
    public void jsonIsStrict() {
        Map<String, Object> m = Golden.map(Json.parse("{\"a\": [1, -2.5e3, \"x\\u00e9\\n\", true, null], \"b\": {}}"));
        assertEquals(Arrays.asList(1L, -2500.0, "x\u00e9\n", true, null), m.get("a"));
        for (String bad : new String[] {"{\"a\": 1,}", "[1 2]", "{'a': 1}", "NaN", "{\"a\": 1} x", "{\"a\":1, \"a\":2}", "01", ""}) {
            assertThrows(bad, IllegalArgumentException.class, () -> Json.parse(bad));
        }
    }
}
