"""Layer 2: what an attack does to images and labels. Triggers (`triggers`: small classes that
behave like torchvision v2 transforms; a user's function or triggered images as triggers) and
poisoning (`poison`: dirty-label, clean-label, label-consistent, all-to-one and all-to-all;
triggered test pairs). See docs/architecture.md."""
