package dev.gemmaedge.core;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/** The golden files the Python runtime wrote (gemma_edge/android_golden.py), from -Dgolden.dir. */
final class Golden {
    static final File DIR;
    static final Map<String, Object> JSON;

    static {
        String d = System.getProperty("golden.dir");
        if (d == null) {
            throw new IllegalStateException("set -Dgolden.dir to the output of `python -m gemma_edge.android_golden DIR` "
                + "(android_demo/core/run_tests.sh does both)");
        }
        DIR = new File(d);
        try {
            JSON = map(Json.parse(new String(Files.readAllBytes(new File(DIR, "golden.json").toPath()), StandardCharsets.UTF_8)));
        } catch (IOException e) {
            throw new IllegalStateException("cannot read " + DIR + "/golden.json: " + e);
        }
    }

    private Golden() {}

    @SuppressWarnings("unchecked")
    static Map<String, Object> map(Object o) {
        return (Map<String, Object>) o;
    }

    @SuppressWarnings("unchecked")
    static List<Object> list(Object o) {
        return (List<Object>) o;
    }

    static List<Integer> ints(Object o) {
        List<Integer> r = new ArrayList<>();
        for (Object x : list(o)) r.add((int) (long) (Long) x);
        return r;
    }

    static int[] intArray(Object o) {
        return ints(o).stream().mapToInt(Integer::intValue).toArray();
    }

    static float[] floats(Object o) {
        List<Object> l = list(o);
        float[] r = new float[l.size()];
        for (int i = 0; i < r.length; i++) r[i] = ((Number) l.get(i)).floatValue();
        return r;
    }
}
