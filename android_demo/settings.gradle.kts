pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
        // An ExecuTorch AAR built with gemma-edge's fused kernels (README, "Fused artifacts") goes here.
        flatDir { dirs("app/libs") }
    }
}
rootProject.name = "gemma-edge-demo"
include(":app", ":core")
