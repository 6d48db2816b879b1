package dev.gemmaedge.core;

import java.util.ArrayList;
import java.util.List;

/**
 * Text of a token stream as it grows: each {@link #push} returns the new text since the last call.
 * A token that ends inside a UTF-8 character (Gemma's byte-fallback pieces) yields nothing until
 * the character is complete, so the screen never shows a half character.
 */
public final class StreamDecoder {
    private final Tokenizer tok;
    private final List<Integer> ids = new ArrayList<>();
    private int shown = 0;

    public StreamDecoder(Tokenizer tok) {
        this.tok = tok;
    }

    public String push(int id) {
        ids.add(id);
        String text = tok.decode(ids);
        if (text.endsWith("\uFFFD")) return ""; // an incomplete character: wait for its other bytes
        String fresh = text.length() >= shown ? text.substring(shown) : "";
        shown = text.length();
        return fresh;
    }

    public String text() {
        return tok.decode(ids);
    }
}
