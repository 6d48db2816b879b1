package dev.gemmaedge.core;

import java.util.ArrayList;
import java.util.List;

/**
 * Gemma's chat format: {@code <start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n}, the
 * assistant's turns named "model", contents trimmed. Gemma 3 folds a system message into the first
 * user turn (followed by a blank line); Gemma 2 has no system role. The turn markers are control
 * tokens, so {@link #encode} splits the text at them and tokenizes the pieces between (a plain
 * SentencePiece encode would spell them out character by character).
 */
public final class ChatTemplate {
    public static final String START = "<start_of_turn>", END = "<end_of_turn>";

    public static final class Message {
        public final String role, content;

        public Message(String role, String content) {
            this.role = role;
            this.content = content;
        }
    }

    private ChatTemplate() {}

    /** The prompt text (without BOS) for {@code messages}, ending with the model's turn opened. */
    public static String render(String family, List<Message> messages) {
        if (messages.isEmpty()) throw new IllegalArgumentException("no messages");
        String prefix = "";
        int first = 0;
        if (messages.get(0).role.equals("system")) {
            if (family.equals("gemma2")) throw new IllegalArgumentException("Gemma 2 has no system role: put it in the first user turn");
            prefix = messages.get(0).content.trim() + "\n\n";
            first = 1;
        }
        StringBuilder b = new StringBuilder();
        for (int i = first; i < messages.size(); i++) {
            Message m = messages.get(i);
            String expected = (i - first) % 2 == 0 ? "user" : "assistant";
            if (!m.role.equals(expected)) {
                throw new IllegalArgumentException("message " + i + " has role '" + m.role + "': roles must alternate user/assistant, starting with user");
            }
            String role = m.role.equals("assistant") ? "model" : "user";
            b.append(START).append(role).append('\n').append(i == first ? prefix : "").append(m.content.trim()).append(END).append('\n');
        }
        if (messages.get(messages.size() - 1).role.equals("assistant")) {
            throw new IllegalArgumentException("the last message is the model's: end with a user turn");
        }
        return b.append(START).append("model\n").toString();
    }

    /** Token ids: BOS, then the rendered text with its turn markers as their control ids. */
    public static List<Integer> encode(Tokenizer tok, int bos, String family, List<Message> messages) {
        return encodeWithSpecials(tok, bos, render(family, messages));
    }

    /** BOS (when >= 0), then {@code text} tokenized with every turn marker as its own id. */
    public static List<Integer> encodeWithSpecials(Tokenizer tok, int bos, String text) {
        int start = tok.pieceToId(START), end = tok.pieceToId(END);
        if (start < 0 || end < 0) throw new ArtifactException("this tokenizer has no " + START + " / " + END + " pieces: it is not a Gemma chat tokenizer");
        List<Integer> ids = new ArrayList<>();
        if (bos >= 0) ids.add(bos);
        int i = 0;
        while (i < text.length()) {
            int a = text.indexOf(START, i), z = text.indexOf(END, i);
            int at = a < 0 ? z : (z < 0 ? a : Math.min(a, z));
            if (at < 0) at = text.length();
            if (at > i) ids.addAll(tok.encode(text.substring(i, at)));
            if (at == text.length()) break;
            boolean isStart = at == a;
            ids.add(isStart ? start : end);
            i = at + (isStart ? START : END).length();
        }
        return ids;
    }
}
