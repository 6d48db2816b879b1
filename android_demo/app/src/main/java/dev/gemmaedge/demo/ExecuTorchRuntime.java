package dev.gemmaedge.demo;

import dev.gemmaedge.core.ArtifactException;
import dev.gemmaedge.core.Manifest;
import dev.gemmaedge.core.Runtime;
import java.io.File;
import org.pytorch.executorch.EValue;
import org.pytorch.executorch.Module;
import org.pytorch.executorch.Tensor;

/**
 * Our .pte through ExecuTorch's Module: {@code forward(tokens[1,T] int64, input_pos[1] int64)} returns the
 * last position's logits; the KV caches are mutable buffers inside the program.
 */
final class ExecuTorchRuntime implements Runtime {
    private final Module module;

    ExecuTorchRuntime(Manifest m) {
        if (m.ops.equals("fused")) {
            throw new ArtifactException(m.dir + " was exported with --ops fused: its sliding-window attention and RG-LRU "
                + "kernels are gemma-edge's own and the published executorch-android AAR has none. Export with "
                + "--ops portable, or build an AAR with the kernels (android_demo/README.md).");
        }
        module = Module.load(new File(m.dir, m.modelFile).getPath(), Module.LOAD_MODE_MMAP);
    }

    @Override
    public float[] forward(int[] tokens, int start) {
        long[] ids = new long[tokens.length];
        for (int i = 0; i < ids.length; i++) ids[i] = tokens[i];
        EValue[] out = module.forward(
            EValue.from(Tensor.fromBlob(ids, new long[] {1, ids.length})),
            EValue.from(Tensor.fromBlob(new long[] {start}, new long[] {1})));
        return out[0].toTensor().getDataAsFloatArray();
    }

    @Override
    public void close() {
        module.destroy();
    }
}
