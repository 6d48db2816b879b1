package dev.gemmaedge.core;

import java.util.Arrays;
import java.util.Comparator;

/**
 * Greedy, or temperature sampling with optional top-k and top-p, seeded: the same algorithm, in
 * the same float64 arithmetic and order, as the Python Session's sampler (runtime_py/sampling.py),
 * so a seed gives the same tokens in both (the golden tests check it).
 *
 * <p>Steps: logits / temperature; keep values >= the k-th largest; sort descending (stable) and
 * drop the tail whose preceding probability mass already exceeds top_p; softmax; draw u from
 * SplitMix64 and take the first index whose running sum of exp exceeds u times the total.
 */
public final class Sampler {
    public final double temperature;
    public final int topK;
    public final double topP;
    private final SplitMix64 rng;

    public Sampler(double temperature, int topK, double topP, long seed) {
        if (!(temperature >= 0) || Double.isInfinite(temperature)) {
            throw new IllegalArgumentException("temperature must be a finite number >= 0, got " + temperature);
        }
        if (topK < 0) throw new IllegalArgumentException("top_k must be an integer >= 0, got " + topK);
        if (!(topP > 0 && topP <= 1)) throw new IllegalArgumentException("top_p must be in (0, 1], got " + topP);
        this.temperature = temperature;
        this.topK = topK;
        this.topP = topP;
        this.rng = new SplitMix64(seed);
    }

    public static Sampler greedy() {
        return new Sampler(0, 0, 1, 0);
    }

    public int sample(float[] logits) {
        int n = logits.length;
        if (temperature == 0) {
            int best = 0;
            for (int i = 1; i < n; i++) if (logits[i] > logits[best]) best = i;
            return best;
        }
        double[] x = new double[n];
        for (int i = 0; i < n; i++) x[i] = (double) logits[i] / temperature;
        if (topK > 0 && topK < n) {
            double[] sorted = x.clone();
            Arrays.sort(sorted);
            double kth = sorted[n - topK];
            for (int i = 0; i < n; i++) if (x[i] < kth) x[i] = Double.NEGATIVE_INFINITY;
        }
        if (topP < 1) {
            Integer[] order = new Integer[n];
            for (int i = 0; i < n; i++) order[i] = i;
            Arrays.sort(order, Comparator.comparingDouble((Integer i) -> -x[i]));
            double[] e = new double[n];
            double total = 0;
            for (int j = 0; j < n; j++) {
                e[j] = Math.exp(x[order[j]] - x[order[0]]);
                total += e[j];
            }
            double cum = 0;
            boolean[] drop = new boolean[n];
            for (int j = 0; j < n; j++) {
                double p = e[j] / total;
                cum += p;
                drop[j] = cum - p > topP;
            }
            for (int j = 0; j < n; j++) if (drop[j]) x[order[j]] = Double.NEGATIVE_INFINITY;
        }
        double max = Double.NEGATIVE_INFINITY;
        for (double v : x) max = Math.max(max, v);
        double[] c = new double[n];
        double run = 0;
        for (int i = 0; i < n; i++) {
            run += Math.exp(x[i] - max);
            c[i] = run;
        }
        double u = rng.nextDouble() * run;
        for (int i = 0; i < n; i++) if (c[i] > u) return i;
        return n - 1;
    }
}
