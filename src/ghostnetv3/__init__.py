"""ghostnetv3"""
