"""huabu (画布): self-hosted image generation behind the APIs existing clients already speak."""

__version__ = "0.1.0"
