package dev.gemmaedge.core;

/**
 * The one call the generation loop needs from a runtime (ExecuTorch's Module, ONNX Runtime's
 * session, LiteRT's interpreter): run {@code tokens} at positions {@code start ..} against the
 * model's own state and return the last position's logits. {@code tokens.length} is at most the
 * manifest's prefill chunk; the state beyond {@code start} is overwritten, so a new sequence is
 * a call at position 0.
 */
public interface Runtime extends AutoCloseable {
    float[] forward(int[] tokens, int start);

    /** Bytes the runtime holds for the model (weights and state), for the memory readout; -1 if unknown. */
    default long residentBytes() {
        return -1;
    }

    @Override
    void close();
}
