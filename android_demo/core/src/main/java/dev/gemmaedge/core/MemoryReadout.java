package dev.gemmaedge.core;

/**
 * Resident memory from Linux's {@code /proc/self/status} (what the Python benchmarks measure as
 * RSS): {@code VmRSS} now and {@code VmHWM}, its peak, in bytes; -1 where a field is absent.
 */
public final class MemoryReadout {
    public final long rssBytes, peakRssBytes;

    private MemoryReadout(long rss, long peak) {
        rssBytes = rss;
        peakRssBytes = peak;
    }

    public static MemoryReadout parse(String procStatus) {
        return new MemoryReadout(field(procStatus, "VmRSS:"), field(procStatus, "VmHWM:"));
    }

    private static long field(String s, String name) {
        for (String line : s.split("\n")) {
            if (!line.startsWith(name)) continue;
            String[] parts = line.substring(name.length()).trim().split("\\s+");
            if (parts.length == 2 && parts[1].equals("kB")) return Long.parseLong(parts[0]) * 1024;
        }
        return -1;
    }

    public static String mib(long bytes) {
        return bytes < 0 ? "?" : String.format(java.util.Locale.ROOT, "%.0f MiB", bytes / 1048576.0);
    }
}
