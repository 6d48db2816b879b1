package dev.gemmaedge.core;

import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.function.LongSupplier;

/**
 * The generation loop over a {@link Runtime}, the same loop as the Python Session's
 * {@code generate}: prefill the prompt in chunks of the manifest's prefill chunk from position 0,
 * then sample, stream, stop on a stop token, on {@code maxNewTokens} or at max_seq_len, and
 * decode one token at a time. Prefill and decode are timed separately (tok/s).
 */
public final class Generator {
    /** Streams each new token; return false to stop generating (the app's Stop button). */
    public interface TokenListener {
        boolean onToken(int id);
    }

    /** What one generation produced and how fast. */
    public static final class Result {
        public final List<Integer> tokens;
        public final int promptTokens;
        public final long prefillNanos, decodeNanos;
        public final int decodeSteps;
        public final String stopReason;

        Result(List<Integer> tokens, int promptTokens, long prefillNanos, long decodeNanos, int decodeSteps, String stopReason) {
            this.tokens = tokens;
            this.promptTokens = promptTokens;
            this.prefillNanos = prefillNanos;
            this.decodeNanos = decodeNanos;
            this.decodeSteps = decodeSteps;
            this.stopReason = stopReason;
        }

        public double prefillTokensPerSecond() {
            return prefillNanos > 0 ? promptTokens * 1e9 / prefillNanos : Double.NaN;
        }

        public double decodeTokensPerSecond() {
            return decodeNanos > 0 ? decodeSteps * 1e9 / decodeNanos : Double.NaN;
        }
    }

    private final Runtime runtime;
    private final int vocabSize, maxSeqLen, prefillChunk;
    private final LongSupplier clock;
    private int pos = 0;

    public Generator(Runtime runtime, Manifest m) {
        this(runtime, m.vocabSize, m.maxSeqLen, m.prefillChunk, System::nanoTime);
    }

    public Generator(Runtime runtime, int vocabSize, int maxSeqLen, int prefillChunk, LongSupplier clock) {
        if (vocabSize < 1 || maxSeqLen < 1 || prefillChunk < 1) {
            throw new IllegalArgumentException("vocabSize, maxSeqLen and prefillChunk must be >= 1");
        }
        this.runtime = runtime;
        this.vocabSize = vocabSize;
        this.maxSeqLen = maxSeqLen;
        this.prefillChunk = prefillChunk;
        this.clock = clock;
    }

    public int position() {
        return pos;
    }

    public void reset() {
        pos = 0;
    }

    /** Run {@code ids} from the current position in chunks; return the last position's logits. */
    public float[] prefill(List<Integer> ids) {
        if (ids.isEmpty()) throw new IllegalArgumentException("no tokens given");
        for (int id : ids) {
            if (id < 0 || id >= vocabSize) {
                throw new IllegalArgumentException("token id " + id + " is out of range: the model's vocab_size is " + vocabSize);
            }
        }
        if (pos + ids.size() > maxSeqLen) {
            throw new IllegalArgumentException((pos + ids.size()) + " tokens exceed this artifact's max_seq_len of "
                + maxSeqLen + " (" + ids.size() + " given at position " + pos + ")");
        }
        float[] logits = null;
        for (int start = 0; start < ids.size(); ) {
            int n = Math.min(prefillChunk, ids.size() - start);
            int[] chunk = new int[n];
            for (int j = 0; j < n; j++) chunk[j] = ids.get(start + j);
            logits = runtime.forward(chunk, pos);
            if (logits == null || logits.length != vocabSize) {
                throw new IllegalStateException("the runtime returned " + (logits == null ? "no" : logits.length)
                    + " logits, expected vocab_size " + vocabSize);
            }
            pos += n;
            start += n;
        }
        return logits;
    }

    /** Sample up to {@code maxNewTokens} after {@code prompt}, from position 0. */
    public Result generate(List<Integer> prompt, int maxNewTokens, Sampler sampler, Collection<Integer> stopTokens,
                           TokenListener listener) {
        if (maxNewTokens < 1) throw new IllegalArgumentException("maxNewTokens must be >= 1, got " + maxNewTokens);
        Set<Integer> stops = new HashSet<>(stopTokens);
        reset();
        long t0 = clock.getAsLong();
        float[] logits = prefill(prompt);
        long prefillNanos = clock.getAsLong() - t0, decodeNanos = 0;
        List<Integer> out = new ArrayList<>();
        int steps = 0;
        String reason = "max_seq_len";
        while (out.size() < maxNewTokens && pos < maxSeqLen) {
            int next = sampler.sample(logits);
            out.add(next);
            boolean more = listener == null || listener.onToken(next);
            if (stops.contains(next)) { reason = "stop token"; break; }
            if (out.size() == maxNewTokens) { reason = "max_new_tokens"; break; }
            if (!more) { reason = "cancelled"; break; }
            if (pos >= maxSeqLen) break;
            long t = clock.getAsLong();
            logits = prefill(Collections.singletonList(next));
            decodeNanos += clock.getAsLong() - t;
            steps++;
        }
        return new Result(out, prompt.size(), prefillNanos, decodeNanos, steps, reason);
    }
}
