plugins {
    id("com.android.application")
}

android {
    namespace = "dev.gemmaedge.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.gemmaedge.demo"
        minSdk = 28
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
        ndk { abiFilters += listOf("arm64-v8a") }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_11
        targetCompatibility = JavaVersion.VERSION_11
    }
    packaging {
        // The runtimes' native libraries stay compressed-off and page-aligned (mmap from the APK).
        jniLibs.useLegacyPackaging = false
    }
}

dependencies {
    implementation(project(":core"))
    // The three runtimes, as published. A fused ExecuTorch artifact needs an AAR with our kernels
    // instead of this one (README).
    implementation("org.pytorch:executorch-android:1.0.1")
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.22.0")
    implementation("com.google.ai.edge.litert:litert:1.4.0")
}
