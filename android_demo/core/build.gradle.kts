// Plain Java (no android.* import): the manifest, tokenizer, chat format, sampler and generation
// loop. Its tests replay golden files the Python runtime writes:
//   python -m gemma_edge.android_golden /tmp/golden && ./gradlew :core:test -Pgolden.dir=/tmp/golden
// (on a machine without Gradle, core/run_tests.sh does the same with javac and JUnit).
plugins {
    `java-library`
}

java {
    sourceCompatibility = JavaVersion.VERSION_11
    targetCompatibility = JavaVersion.VERSION_11
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    systemProperty("golden.dir", findProperty("golden.dir") ?: "")
}
