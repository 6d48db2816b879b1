package dev.gemmaedge.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** The Java SentencePiece against the C++ library's ids and text, on every golden tokenizer. */
public class GoldenTokenizerTest {
    private static List<Map<String, Object>> tokenizers() {
        List<Map<String, Object>> r = new ArrayList<>();
        for (Object o : Golden.list(Golden.JSON.get("tokenizers"))) r.add(Golden.map(o));
        return r;
    }

    @Test
    public void encodeAndDecodeMatchSentencePiece() {
        int checked = 0;
        for (Map<String, Object> t : tokenizers()) {
            Tokenizer tok = Tokenizer.load(new File(Golden.DIR, (String) t.get("file")));
            assertEquals(t.get("file") + " vocab", (long) (Long) t.get("vocab_size"), tok.vocabSize());
            for (Object o : Golden.list(t.get("cases"))) {
                Map<String, Object> c = Golden.map(o);
                String text = (String) c.get("text");
                List<Integer> ids = Golden.ints(c.get("ids"));
                assertEquals(t.get("file") + ": encode " + text, ids, tok.encode(text));
                assertEquals(t.get("file") + ": decode " + ids, c.get("decoded"), tok.decode(ids));
                StreamDecoder stream = new StreamDecoder(tok);
                StringBuilder shown = new StringBuilder();
                for (int id : ids) shown.append(stream.push(id));
                assertEquals(t.get("file") + ": streamed " + ids, c.get("decoded"), shown.toString());
                checked++;
            }
        }
        assertTrue(checked >= 16);
    }

    @Test
    public void chatPromptsMatch() {
        int checked = 0;
        for (Map<String, Object> t : tokenizers()) {
            Tokenizer tok = Tokenizer.load(new File(Golden.DIR, (String) t.get("file")));
            for (Object o : Golden.list(t.get("chats"))) {
                Map<String, Object> c = Golden.map(o);
                List<ChatTemplate.Message> msgs = new ArrayList<>();
                for (Object mo : Golden.list(c.get("messages"))) {
                    Map<String, Object> m = Golden.map(mo);
                    msgs.add(new ChatTemplate.Message((String) m.get("role"), (String) m.get("content")));
                }
                assertEquals(c.get("text"), ChatTemplate.render("gemma3", msgs));
                assertEquals(t.get("file") + " chat ids", Golden.ints(c.get("ids")), ChatTemplate.encode(tok, 2, "gemma3", msgs));
                checked++;
            }
        }
        assertTrue(checked >= 4);
    }
}
