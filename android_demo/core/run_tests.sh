#!/bin/sh
# Compile the core and its JUnit tests with javac and run them against golden files.
# usage: run_tests.sh GOLDEN_DIR   (write it with: python -m gemma_edge.android_golden GOLDEN_DIR)
# JUnit 4 and Hamcrest come from Debian's junit4 package (the top-level Makefile installs it).
set -eu
golden=${1:?usage: run_tests.sh GOLDEN_DIR}
here=$(cd "$(dirname "$0")" && pwd)
junit=${JUNIT_JAR:-/usr/share/java/junit4.jar}
hamcrest=${HAMCREST_JAR:-/usr/share/java/hamcrest-core.jar}
for jar in "$junit" "$hamcrest"; do
  [ -f "$jar" ] || { echo "run_tests.sh: $jar is missing: install Debian's junit4 package (make junit)" >&2; exit 2; }
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# --release 11: the language level and library the app module targets (Android's desugared Java 11)
javac --release 11 -Xlint:all -Werror -d "$out/main" $(find "$here/src/main/java" -name '*.java')
javac --release 11 -Xlint:all -Werror -cp "$out/main:$junit" -d "$out/test" $(find "$here/src/test/java" -name '*.java')
# The app module cannot be compiled here (no android.jar, no runtime AARs): parse its sources.
java "$here/../tools/ParseCheck.java" $(find "$here/../app/src" -name '*.java')
tests=$(cd "$here/src/test/java" && find . -name '*Test.java' | sed 's|^\./||; s|\.java$||; s|/|.|g' | sort)
java -Dgolden.dir="$golden" -cp "$out/main:$out/test:$junit:$hamcrest" org.junit.runner.JUnitCore $tests
