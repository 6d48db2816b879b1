package dev.gemmaedge.core;

/** An artifact (manifest, model or tokenizer file) that cannot be used, with the file and key named. */
public class ArtifactException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public ArtifactException(String message) {
        super(message);
    }
}
