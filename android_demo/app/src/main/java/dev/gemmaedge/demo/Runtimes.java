package dev.gemmaedge.demo;

import dev.gemmaedge.core.ArtifactException;
import dev.gemmaedge.core.Manifest;
import dev.gemmaedge.core.Runtime;

/** The runtime an artifact's manifest names, opened on the phone's CPU. */
final class Runtimes {
    private Runtimes() {}

    static Runtime open(Manifest m, int threads) {
        if (!m.family.equals("gemma2") && !m.family.equals("gemma3") && !m.family.equals("recurrentgemma")) {
            throw new ArtifactException(m.dir + ": " + m.family + " is not a causal LM this app can generate from");
        }
        switch (m.backend) {
            case "executorch":
                return new ExecuTorchRuntime(m);
            case "onnx":
                return new OnnxRuntimeRuntime(m, threads);
            case "litert":
                return new LiteRtRuntime(m, threads);
            default:
                throw new ArtifactException(m.dir + ": backend '" + m.backend + "' has no runtime in this app");
        }
    }
}
